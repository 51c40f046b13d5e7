"""Reads: what a person may see, and the status a batch page polls."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from .models import Batch, BatchChunk, User

ADD_BATCH_PERMISSION = "generator.add_batch"
# The staff flag alone opens nothing: seeing or managing other people's batches and accounts
# takes the model permission (superusers have them all).
VIEW_ANY_BATCH_PERMISSION = "generator.view_batch"
MANAGE_ANY_BATCH_PERMISSION = "generator.change_batch"
VIEW_ANY_USER_PERMISSION = "generator.view_user"


def can_manage(user: User, batch: Batch) -> bool:
    """Who may cancel, resume or undo a batch: someone who may generate users, for their own
    batches, or for any batch with the permission to change batches."""
    if not user.has_perm(ADD_BATCH_PERMISSION):
        return False
    return batch.requested_by_id == user.pk or user.has_perm(MANAGE_ANY_BATCH_PERMISSION)


def can_manage_any(user: User) -> bool:
    """May manage every batch (the admin's actions): generate, and change batches."""
    return user.has_perm(ADD_BATCH_PERMISSION) and user.has_perm(MANAGE_ANY_BATCH_PERMISSION)


def batches_visible_to(user: User) -> QuerySet[Batch]:
    """With the view permission, every batch; everyone else sees the batches they asked for."""
    batches = Batch.objects.select_related("requested_by")
    if user.has_perm(VIEW_ANY_BATCH_PERMISSION):
        return batches
    return batches.filter(requested_by=user)


def users_visible_to(user: User, *, batch: Batch | None = None) -> QuerySet[User]:
    """Newest first; with the user model's view permission, every account, else the accounts
    of one's own batches."""
    users = User.objects.order_by("-id")
    if batch is not None:
        return users.filter(batch=batch)
    if user.has_perm(VIEW_ANY_USER_PERMISSION):
        return users
    return users.filter(batch__requested_by=user)


def _seconds(value: Any) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def batch_status(batch: Batch) -> dict[str, Any]:
    """The JSON shape of a batch, shared by the API and the live batch page."""
    rate = batch.rate
    return {
        "id": batch.pk,
        "status": batch.status,
        "status_display": batch.get_status_display(),
        "total": batch.total,
        "created": batch.created_count,
        "percent": batch.percent,
        "done": batch.is_done,
        "users_per_second": None if rate is None else round(rate, 1),
        "elapsed_seconds": _seconds(batch.elapsed),
        "eta_seconds": _seconds(batch.eta),
        "failure_reason": batch.failure_reason,
        "can_resume": batch.can_resume,
        "can_cancel": batch.can_cancel,
        "can_delete_users": batch.can_delete_users,
        "realistic_names": batch.realistic_names,
        "seed": batch.seed,
        "deleted": batch.deleted_count,
        "deleted_percent": batch.deleted_percent,
        "deleted_at": batch.deleted_at.isoformat() if batch.deleted_at else None,
        "requested_by": batch.requested_by.get_username() if batch.requested_by else None,
        "created_at": batch.created_at.isoformat(),
        "started_at": batch.started_at.isoformat() if batch.started_at else None,
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
        "url": batch.get_absolute_url(),
        "users_url": f"{reverse('generator:user_list')}?batch={batch.pk}",
        "csv_url": reverse("generator:batch_users_csv", args=[batch.pk]),
    }


EXPORT_COLUMNS = ["username", "email", "first_name", "last_name", "date_joined"]


def batch_users_export_rows(batch: Batch, *, chunk_size: int = 2_000) -> Iterator[tuple[Any, ...]]:
    """The batch's accounts as export rows, read in chunks so memory stays flat in N.

    Never a password column: the export is meant to be shared.
    """
    rows = (
        User.objects.filter(batch=batch)
        .order_by("pk")
        .values_list(*EXPORT_COLUMNS)
        .iterator(chunk_size=chunk_size)
    )
    for username, email, first_name, last_name, date_joined in rows:
        yield username, email, first_name, last_name, date_joined.isoformat()


def batches_without_a_live_run(*, quiet_since: datetime) -> QuerySet[Batch]:
    """Unfinished batches with no chunk under a live lease and no job enqueued lately."""
    live_lease = BatchChunk.objects.filter(
        batch=OuterRef("pk"), done=False, lease_expires_at__gt=timezone.now()
    )
    return (
        Batch.objects.filter(status__in=[Batch.Status.PENDING, Batch.Status.RUNNING])
        .filter(
            Q(last_enqueued_at__lt=quiet_since)
            | Q(last_enqueued_at__isnull=True, created_at__lt=quiet_since)
        )
        .exclude(Exists(live_lease))
        .order_by("created_at")
    )


def batches_deleting(*, quiet_since: datetime) -> QuerySet[Batch]:
    """Batches whose users are being deleted and that got no job lately."""
    return (
        Batch.objects.filter(status=Batch.Status.DELETING)
        .filter(Q(last_enqueued_at__lt=quiet_since) | Q(last_enqueued_at__isnull=True))
        .order_by("created_at")
    )
