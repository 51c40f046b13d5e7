"""A batch as JSON: the shape the API answers with and the live batch page reads."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict

from django.urls import reverse

from .models import Batch


class BatchStatusJSON(TypedDict):
    """The status JSON of one batch (`GET /api/batches/<id>/`)."""

    id: int
    status: str
    status_display: str
    total: int
    created: int
    percent: int
    done: bool
    users_per_second: float | None
    elapsed_seconds: float | None
    eta_seconds: float | None
    failure_reason: str
    can_resume: bool
    can_cancel: bool
    can_delete_users: bool
    realistic_names: bool
    seed: int | None
    deleted: int
    deleted_percent: int
    deleted_at: str | None
    requested_by: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    url: str
    users_url: str
    csv_url: str


def batch_status(batch: Batch) -> BatchStatusJSON:
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
        "deleted_at": _isoformat(batch.deleted_at),
        "requested_by": batch.requested_by.get_username() if batch.requested_by else None,
        "created_at": batch.created_at.isoformat(),
        "started_at": _isoformat(batch.started_at),
        "finished_at": _isoformat(batch.finished_at),
        "url": batch.get_absolute_url(),
        "users_url": f"{reverse('generator:user_list')}?batch={batch.pk}",
        "csv_url": reverse("generator:batch_users_csv", args=[batch.pk]),
    }


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def _isoformat(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
