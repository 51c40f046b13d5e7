"""HTTP only: parse, call one use case or selector, then redirect or render."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, RequestDataTooBig, ValidationError
from django.core.paginator import InvalidPage, Page, Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import conf, formatting, selectors, serializers, use_cases
from .forms import BatchForm
from .models import Batch, User

ADD_BATCH_PERMISSION = selectors.ADD_BATCH_PERMISSION


class AuthenticatedRequest(HttpRequest):
    """A request past login_required (or api_login_required): its user is never anonymous."""

    user: User


def paginate(request: HttpRequest, items: QuerySet[Any]) -> Page:
    """One page of `items`; a bad page number is a 404, never a 500."""
    paginator = Paginator(items, conf.page_size())
    try:
        return paginator.page(request.GET.get("page") or 1)
    except InvalidPage:
        raise Http404("No such page.") from None


def parse_id(value: str | None) -> int | None:
    """An id from a query string; a malformed one is a 404."""
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise Http404("No such batch.")
    return int(value)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("generator:generate")


@sensitive_post_parameters("password")
@login_required
@permission_required(ADD_BATCH_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def generate(request: AuthenticatedRequest) -> HttpResponse:
    form = BatchForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            batch = use_cases.batch_submit(requested_by=request.user, **form.batch_options())
        except ValidationError as refusal:
            form.add_error(None, refusal)
        else:
            # True whenever it is read: the batch page itself tells where the batch is now.
            messages.success(
                request, f"Batch #{batch.pk} requested: {formatting.thousands(batch.total)} users."
            )
            return redirect(batch)
    return render(request, "generator/generate.html", {"form": form})


@login_required
@require_GET
def batch_list(request: AuthenticatedRequest) -> HttpResponse:
    page = paginate(request, selectors.batches_visible_to(request.user))
    return render(request, "generator/batch_list.html", {"page": page})


# The batch page's progress section alone, for its script to swap in: `?fragment=progress`.
FRAGMENTS = {"progress": "generator/batch_detail.html#progress"}


@login_required
@require_GET
def batch_detail(request: AuthenticatedRequest, batch_id: int) -> HttpResponse:
    batch = get_object_or_404(selectors.batches_visible_to(request.user), pk=batch_id)
    return render(
        request,
        FRAGMENTS.get(request.GET.get("fragment", ""), "generator/batch_detail.html"),
        {
            "batch": batch,
            "can_manage": selectors.can_manage(request.user, batch),
        },
    )


def managed_batch(request: AuthenticatedRequest, batch_id: int) -> Batch:
    batch = get_object_or_404(selectors.batches_visible_to(request.user), pk=batch_id)
    if not selectors.can_manage(request.user, batch):
        raise PermissionDenied
    return batch


@login_required
@require_POST
def batch_cancel(request: AuthenticatedRequest, batch_id: int) -> HttpResponse:
    batch = use_cases.batch_cancel(batch_id=managed_batch(request, batch_id).pk)
    if batch.status == Batch.Status.CANCELLED:
        messages.success(request, f"Batch #{batch.pk} cancelled; users already made are kept.")
    else:
        messages.info(request, f"Batch #{batch.pk} had already ended.")
    return redirect(batch)


@login_required
@require_POST
def batch_resume(request: AuthenticatedRequest, batch_id: int) -> HttpResponse:
    batch = managed_batch(request, batch_id)
    try:
        batch = use_cases.batch_resume(batch_id=batch.pk, resumed_by=request.user)
    except ValidationError as refusal:
        messages.error(request, " ".join(refusal.messages))
        return redirect(batch)
    if batch.status == Batch.Status.PENDING:
        messages.success(request, f"Batch #{batch.pk} resumed: the missing users are on the way.")
    else:
        messages.info(request, f"Batch #{batch.pk} cannot be resumed.")
    return redirect(batch)


@login_required
@require_http_methods(["GET", "POST"])
def batch_delete_users(request: AuthenticatedRequest, batch_id: int) -> HttpResponse:
    """GET asks for confirmation; POST records the request and queues the deletion."""
    batch = managed_batch(request, batch_id)
    if request.method == "GET":
        return render(request, "generator/batch_delete_users.html", {"batch": batch})
    try:
        batch = use_cases.batch_users_delete_submit(batch_id=batch.pk)
    except ValidationError as refusal:
        messages.error(request, " ".join(refusal.messages))
    else:
        if batch.status == Batch.Status.DELETING:
            messages.success(request, f"Deleting the users of batch #{batch.pk}.")
        else:
            messages.info(request, f"The users of batch #{batch.pk} were already deleted.")
    return redirect(batch)


class Echo:
    """A file-like object that hands back what it is given, for csv.writer to stream."""

    def write(self, value: str) -> str:
        return value


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A cell a spreadsheet shows as text: a leading quote defuses a would-be formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(header: list[str], rows: Iterator[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([csv_cell(value) for value in row])


@login_required
@require_GET
def batch_users_csv(request: AuthenticatedRequest, batch_id: int) -> StreamingHttpResponse:
    batch = get_object_or_404(selectors.batches_visible_to(request.user), pk=batch_id)
    if not selectors.can_read_accounts_of(request.user, batch):
        raise Http404("No such batch.")
    # Streamed: a batch of a million accounts never sits in memory, in Django or the browser.
    response = StreamingHttpResponse(
        csv_lines(selectors.EXPORT_COLUMNS, selectors.batch_users_export_rows(batch)),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="batch-{batch.pk}-users.csv"'
    return response


@login_required
@require_GET
def user_list(request: AuthenticatedRequest) -> HttpResponse:
    batch_id = parse_id(request.GET.get("batch"))
    batch = None
    if batch_id is not None:
        batch = get_object_or_404(selectors.batches_visible_to(request.user), pk=batch_id)
    page = paginate(request, selectors.users_visible_to(request.user, batch=batch))
    return render(request, "generator/user_list.html", {"page": page, "batch": batch})


def json_error(status: int, message: str, errors: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse({"error": message, "errors": errors or {}}, status=status)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF refusal, as JSON for the API's programs (settings.CSRF_FAILURE_VIEW)."""
    if request.path.startswith(reverse("generator:api_batch_create")):
        return json_error(
            403, "CSRF check failed: send the csrftoken cookie back as the X-CSRFToken header."
        )
    return django_csrf_failure(request, reason=reason)


def api_methods(
    *methods: str,
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Like require_http_methods, answering other methods with a JSON 405."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = json_error(405, f"Use {' or '.join(methods)} here.")
                response["Allow"] = ", ".join(methods)
                return response
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def api_login_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Programs get a JSON 401, not a redirect to the login page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return json_error(401, "Log in first (session cookie and CSRF token).")
        return view(request, *args, **kwargs)

    return wrapper


@sensitive_post_parameters()
@api_login_required
@api_methods("POST")
def api_batch_create(request: AuthenticatedRequest) -> HttpResponse:
    if not request.user.has_perm(ADD_BATCH_PERMISSION):
        return json_error(403, "You may not generate users.")
    try:
        payload = json.loads(request.body)
    except RequestDataTooBig:
        return json_error(413, "The body is too large: a batch is a small JSON object.")
    # RecursionError: a deeply nested body, which no batch is.
    except (UnicodeDecodeError, ValueError, RecursionError):
        return json_error(400, 'The body must be a JSON object, like {"total": 100}.')
    if not isinstance(payload, dict):
        return json_error(400, 'The body must be a JSON object, like {"total": 100}.')
    form = BatchForm(data={**payload, "idempotency_key": request.headers.get("Idempotency-Key")})
    if not form.is_valid():
        return json_error(400, "Invalid batch.", form.errors.get_json_data())
    try:
        batch = use_cases.batch_submit(requested_by=request.user, **form.batch_options())
    except ValidationError as refusal:
        return json_error(429, " ".join(refusal.messages))
    response = JsonResponse(serializers.batch_status(batch), status=202)
    response["Location"] = batch.get_absolute_url()
    return response


@api_login_required
@api_methods("GET", "HEAD")
def api_batch_detail(request: AuthenticatedRequest, batch_id: int) -> HttpResponse:
    try:
        batch = selectors.batches_visible_to(request.user).get(pk=batch_id)
    except Batch.DoesNotExist:
        return json_error(404, "No such batch.")
    return JsonResponse(serializers.batch_status(batch))
