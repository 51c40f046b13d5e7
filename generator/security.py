"""Request-level guards: the dashboard's CSP exception and the client address for lockouts."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

# Both places the django-rq dashboard is served.
DASHBOARD_PATHS = ("/django-rq/", "/admin/django_rq/")


class DashboardCspMiddleware:
    """Give the django-rq dashboard the policy its inline scripts and styles need.

    Every other page keeps the strict SECURE_CSP; the dashboard is for staff with its permission.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path_info.startswith(DASHBOARD_PATHS):
            response._csp_config = settings.DASHBOARD_CSP  # type: ignore[attr-defined]
        return response


def client_ip(request: HttpRequest) -> str | None:
    """The address a login attempt came from, as django-axes counts failures.

    Behind GENERATOR_PROXY_COUNT proxies that each append to X-Forwarded-For (Heroku's router:
    one), the client is that many entries from the right; anything left of it is whatever the
    client chose to send, so it is never trusted.
    """
    proxies = settings.GENERATOR_PROXY_COUNT
    if proxies:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        hops = [hop.strip() for hop in forwarded if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR")
