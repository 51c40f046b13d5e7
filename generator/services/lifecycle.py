"""A batch's life between its chunks: started, failed, cancelled, reopened, its jobs counted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db import models, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import Batch, BatchChunk, User
from ..selectors import MANAGE_ANY_BATCH_PERMISSION
from .requests import active_limit_check, requester_lock

# Called with the batch as it is after each committed chunk.
ProgressCallback = Callable[[Batch], None]


def batch_start(*, batch_id: int) -> Batch:
    """Mark a pending batch running and return it; a resumed batch keeps the start of its
    first run, so that its figures cover the whole batch."""
    now = Value(timezone.now(), output_field=models.DateTimeField())
    # One statement, matching nothing once the batch runs and has started: on PostgreSQL a run
    # joining a running batch neither waits for nor locks its row.
    Batch.objects.filter(pk=batch_id).filter(
        Q(status=Batch.Status.PENDING) | Q(status=Batch.Status.RUNNING, started_at__isnull=True)
    ).update(
        status=Case(
            When(status=Batch.Status.PENDING, then=Value(Batch.Status.RUNNING)),
            default=F("status"),
        ),
        started_at=Coalesce(F("started_at"), now),
    )
    return Batch.objects.get(pk=batch_id)


def batch_fail(*, batch_id: int, reason: str) -> bool:
    """Mark an unfinished batch failed with a reason a person can read; whether it was
    unfinished."""
    with transaction.atomic():
        failed = (
            Batch.objects.active()
            .filter(pk=batch_id)
            .update(status=Batch.Status.FAILED, failure_reason=reason, finished_at=timezone.now())
        )
        _leases_clear(batch_id)
    return bool(failed)


def batch_cancel(*, batch_id: int) -> Batch:
    """Stop an unfinished batch between chunks; the users already committed are kept."""
    with transaction.atomic():
        Batch.objects.active().filter(pk=batch_id).update(
            status=Batch.Status.CANCELLED, finished_at=timezone.now()
        )
    return Batch.objects.get(pk=batch_id)


def batch_reopen(*, batch_id: int, reopened_by: User | None = None) -> Batch:
    """Make a failed or cancelled batch pending again, so new runs finish what is missing.

    A person reopening their own batch is held to their limit on active batches (a
    ValidationError); those who may manage every batch, and the operator, are not.
    """
    with transaction.atomic():
        if reopened_by is not None and not reopened_by.has_perm(MANAGE_ANY_BATCH_PERMISSION):
            # Locked as in batch_request, so concurrent requests count one by one.
            requester_lock(reopened_by)
            active_limit_check(requested_by=reopened_by)
        reopened = (
            Batch.objects.resumable()
            .filter(pk=batch_id)
            .update(
                status=Batch.Status.PENDING,
                failure_reason="",
                finished_at=None,
                paused_for=_paused_for_until(timezone.now()),
            )
        )
        if reopened:
            # Whoever held a chunk is gone or stopping: a run still alive checks its lease
            # under the chunk's lock before it writes, so it cannot double a chunk.
            _leases_clear(batch_id)
    return Batch.objects.get(pk=batch_id)


def _paused_for_until(now: datetime) -> Case:
    """The batch's paused time, with the pause from its end until `now` (a batch that never
    started has no elapsed time to leave it out of)."""
    pause = Value(now, output_field=models.DateTimeField()) - F("finished_at")
    return Case(
        When(
            started_at__isnull=False,
            finished_at__isnull=False,
            then=F("paused_for") + pause,
        ),
        default=F("paused_for"),
        output_field=models.DurationField(),
    )


def batch_release(*, batch_id: int, run_id: str) -> None:
    """Give back the chunks a stopping run holds, so the next run can take them at once."""
    BatchChunk.objects.filter(batch_id=batch_id, lease_owner=run_id, done=False).update(
        lease_owner="", lease_worker="", lease_job="", lease_expires_at=None
    )


def batch_record_enqueued(
    *, batch_id: int, job_id_for: Callable[[int], str], runs: int = 1
) -> list[str]:
    """Count `runs` more run jobs for the batch and return their ids, `job_id_for(number)`."""
    with transaction.atomic(savepoint=False):  # the caller's transaction, if any, whole
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        numbers = range(batch.jobs_enqueued + 1, batch.jobs_enqueued + runs + 1)
        batch.jobs_enqueued += runs
        batch.last_job_id = job_id_for(batch.jobs_enqueued)
        batch.last_enqueued_at = timezone.now()
        batch.save(update_fields=["jobs_enqueued", "last_job_id", "last_enqueued_at"])
    return [job_id_for(number) for number in numbers]


def batch_record_job(*, batch_id: int, job_id: str) -> None:
    """Remember a job enqueued for the batch (a deletion), for the reconciler to check on."""
    Batch.objects.filter(pk=batch_id).update(last_job_id=job_id, last_enqueued_at=timezone.now())


def _leases_clear(batch_id: int) -> None:
    BatchChunk.objects.filter(batch_id=batch_id, done=False).update(
        lease_owner="", lease_worker="", lease_job="", lease_expires_at=None
    )
