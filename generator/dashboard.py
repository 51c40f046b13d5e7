"""The django-rq dashboard, at /django-rq/ and in the admin, behind a permission of its own.

django-rq's views let any staff member empty queues and delete or requeue jobs, and its
statistics also accept the API token in the URL path, where access logs and browser history keep
it. Both routes are built here from django-rq's own views, each wrapped in the permission check,
with the statistics and metrics views replaced by ones that take the token from the
Authorization header only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, wraps
from secrets import compare_digest
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path, re_path
from django.views.decorators.cache import never_cache
from django_rq import stats_views
from django_rq.admin import QueueAdmin
from django_rq.contrib.prometheus import RQCollector
from django_rq.models import Dashboard
from django_rq.urls import get_admin_urlpatterns
from django_rq.utils import get_statistics

DASHBOARD_PERMISSION = "generator.use_rq_dashboard"
View = Callable[..., HttpResponse]


def may_use_dashboard(user: Any) -> bool:
    """Staff with the dashboard's permission (superusers have every permission)."""
    return bool(user.is_active and user.is_staff and user.has_perm(DASHBOARD_PERMISSION))


def permission_required(view: View) -> View:
    """Staff without the dashboard's permission get a 403."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not may_use_dashboard(request.user):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return guarded


def dashboard_view(view: View) -> View:
    """For /django-rq/: anyone not staff goes to the admin login, as django-rq sends them."""
    return staff_member_required(permission_required(view))


def bearer_token_matches(request: HttpRequest) -> bool:
    """The Authorization header carries RQ_API_TOKEN (never the URL, which logs keep)."""
    expected = getattr(settings, "RQ_API_TOKEN", "")
    header = request.headers.get("Authorization", "")
    if not expected or not header.startswith("Bearer "):
        return False
    token = header.removeprefix("Bearer ").strip()
    # As bytes: compare_digest refuses str with characters outside ASCII.
    return bool(token) and compare_digest(expected.encode(), token.encode())


def may_read_statistics(request: HttpRequest) -> bool:
    return bearer_token_matches(request) or may_use_dashboard(request.user)


def unauthorized() -> JsonResponse:
    return JsonResponse(
        {
            "error": True,
            "description": "Send the API token as `Authorization: Bearer <token>`, or log in "
            "with the dashboard's permission.",
        },
        status=401,
    )


@never_cache
def stats_json(request: HttpRequest) -> JsonResponse:
    if not may_read_statistics(request):
        return unauthorized()
    return JsonResponse(get_statistics())


@cache
def metrics_registry() -> Any:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry(auto_describe=True)
    registry.register(RQCollector())
    return registry


@never_cache
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    if not may_read_statistics(request):
        return unauthorized()
    import prometheus_client

    registry = metrics_registry()
    if "name[]" in request.GET:
        registry = registry.restricted_registry(request.GET.getlist("name[]"))
    encoder, content_type = prometheus_client.exposition.choose_encoder(
        request.headers.get("Accept", "")
    )
    return HttpResponse(encoder(registry), headers={"Content-Type": content_type})


def api_urlpatterns(name_prefix: str = "") -> list[URLPattern]:
    """django-rq's statistics and metrics routes, without `stats.json/<token>/`."""
    patterns = [re_path(r"^stats\.json/?$", stats_json, name=f"{name_prefix}home_json")]
    if RQCollector is not None:
        patterns.append(re_path(r"^metrics/?$", prometheus_metrics, name=f"{name_prefix}metrics"))
    return patterns


def urlpatterns() -> list[URLPattern]:
    """The dashboard at /django-rq/ (namespace `django_rq`, as django-rq's templates reverse)."""
    return api_urlpatterns() + get_admin_urlpatterns(view_wrapper=dashboard_view)


class DashboardAdmin(QueueAdmin):
    """django-rq's admin entry, shown to and usable by the dashboard's permission holders only."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_use_dashboard(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_use_dashboard(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_use_dashboard(request.user)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return permission_required(stats_views.stats)(request)

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: View) -> View:
            guarded = self.admin_site.admin_view(permission_required(view))

            @wraps(view)
            def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
                # django-rq's templates reverse their links in the admin's namespace.
                request.current_app = self.admin_site.name
                return guarded(request, *args, **kwargs)

            return wrapper

        # Of the ModelAdmin's own URLs only the changelist's name, which the admin index links
        # to (its path is the dashboard's home): the model has no table to add to or change.
        changelist = path(
            "",
            wrap(self.changelist_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_changelist",
        )
        return (
            api_urlpatterns(name_prefix="django_rq_")
            + get_admin_urlpatterns(name_prefix="django_rq_", view_wrapper=wrap)
            + [changelist]
        )


def admin_register(site: admin.AdminSite) -> None:
    """Put DashboardAdmin where django-rq registered its own (when RQ_SHOW_ADMIN_LINK).

    django-rq registers its entry when django_rq.admin is imported, which this module does.
    """
    if site.is_registered(Dashboard):
        site.unregister(Dashboard)
        site.register(Dashboard, DashboardAdmin)
