"""Reads: what a person may see, and the status a batch page polls."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import reverse

from .models import Batch, User


def batches_visible_to(user: User) -> QuerySet[Batch]:
    """Staff see every batch; everyone else sees the batches they asked for."""
    batches = Batch.objects.select_related("requested_by")
    if user.is_staff:
        return batches
    return batches.filter(requested_by=user)


def users_visible_to(user: User, *, batch: Batch | None = None) -> QuerySet[User]:
    """Newest first; staff see every account, others the accounts of their own batches."""
    users = User.objects.order_by("-id")
    if batch is not None:
        return users.filter(batch=batch)
    if user.is_staff:
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
        "requested_by": batch.requested_by.get_username() if batch.requested_by else None,
        "created_at": batch.created_at.isoformat(),
        "started_at": batch.started_at.isoformat() if batch.started_at else None,
        "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
        "url": batch.get_absolute_url(),
        "users_url": f"{reverse('generator:user_list')}?batch={batch.pk}",
    }
