"""The use cases: what a person, the operator or a job asks of the app, one function each.

Every entry point (views, API, admin, commands, jobs, the worker) calls one function here.
A use case commits its state changes through the services, then puts the work on the queue
through the adapter once they are committed: a worker must never pick up a batch it cannot
read yet. Neither HTTP nor RQ is known here; the adapter translates RQ's signals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Unpack

from django.db import DatabaseError, connection, transaction
from django.views.decorators.debug import sensitive_variables

from . import backups, conf, queueing, reconciler, services
from .models import Batch, User
from .services import BatchOptions, ProgressCallback

logger = logging.getLogger(__name__)

# How often a run, between its chunks, looks for other batches nothing works on.
LOOK_AROUND_SECONDS = 5


@dataclass(frozen=True)
class Reconciled:
    """The batches a reconcile enqueued, and in how many seconds to look again at those whose
    job may still be on its way (None: no need)."""

    enqueued: list[int]
    look_again_in: float | None


@sensitive_variables("options")
def batch_submit(
    *, requested_by: User | None, enforce_limits: bool = True, **options: Unpack[BatchOptions]
) -> Batch:
    """Record a batch, then enqueue its runs once the row is committed.

    A person's request goes through their limits and idempotency key (ValidationError when
    refused); the operator's command line passes enforce_limits=False.
    """
    with transaction.atomic():
        if requested_by is None or not enforce_limits:
            options.pop("idempotency_key", None)
            batch, created = services.batch_create(requested_by=requested_by, **options), True
        else:
            batch, created = services.batch_request(requested_by=requested_by, **options)
        if created:
            _runs_enqueue_on_commit(batch, in_worker=reconciler.runs_in_worker(batch))
    return batch


def batch_cancel(*, batch_id: int) -> Batch:
    """Stop an unfinished batch between chunks; the users already made are kept."""
    return services.batch_cancel(batch_id=batch_id)


def batch_resume(*, batch_id: int, resumed_by: User | None = None) -> Batch:
    """Reopen a failed or cancelled batch and enqueue runs to finish it.

    Raises ValidationError when the person resuming it is at their limit of active batches.
    """
    with transaction.atomic():
        batch = services.batch_reopen(batch_id=batch_id, reopened_by=resumed_by)
        if batch.status == Batch.Status.PENDING:
            # A work horse: a run someone stopped from the dashboard can be stopped again.
            _runs_enqueue_on_commit(batch, in_worker=False)
    return batch


def batch_run_stopped(*, batch_id: int) -> bool:
    """One of the batch's runs was stopped (the queue dashboard's Stop): the batch stops with
    it, resumable, instead of the reconciler queueing a run again at once. Whether it stopped
    the batch (not when the batch had ended already)."""
    return services.batch_fail(
        batch_id=batch_id, reason="A job of the batch was stopped from the queue dashboard."
    )


def batch_users_delete_submit(*, batch_id: int) -> Batch:
    """Mark the batch for deletion and enqueue the job once that is committed.

    Raises ValidationError while the batch is still creating users.
    """
    with transaction.atomic():
        batch = services.batch_users_delete_request(batch_id=batch_id)
        if batch.status == Batch.Status.DELETING:
            transaction.on_commit(partial(batch_users_delete_enqueue, batch.pk))
    return batch


def batch_run(
    *,
    batch_id: int,
    run_id: str,
    on_progress: ProgressCallback,
    holder: services.LeaseHolder = services.NO_HOLDER,
    keep_going: Callable[[], bool] = lambda: True,
) -> Batch:
    """One run of the batch (a job): fill its free chunks, a dead run's first, and between
    chunks look after the other batches too. A stopping worker hands the batch over to the
    next run; any other error fails the batch with a reason a person can read.

    `holder` names the RQ worker and job the run's leases belong to; `keep_going` is asked
    between chunks (no: the run's worker died, and the run stops).
    """
    look_around = _at_most_every(
        LOOK_AROUND_SECONDS, partial(_others_reconcile, except_batch=batch_id)
    )

    def progressed(batch: Batch) -> None:
        on_progress(batch)
        look_around()

    try:
        return services.batch_generate_users(
            batch_id=batch_id,
            run_id=run_id,
            holder=holder,
            holders_gone=_lease_holders_gone_if_known,
            on_progress=progressed,
            keep_going=keep_going,
        )
    except queueing.WorkerShutdown:
        # A platform restart (SIGTERM): hand the chunks over and queue the rest for the next
        # worker at once, instead of waiting for the leases to run out.
        logger.warning("batch %s: worker shutting down, handing the batch over", batch_id)
        # Raised by a signal handler, it may have cut a query short and left the connection
        # in the middle of it: the hand-over needs a fresh one.
        connection.close()
        services.batch_release(batch_id=batch_id, run_id=run_id)
        batch_enqueue(batch_id)
        raise
    except queueing.JobTimedOut:
        connection.close()  # raised by a signal handler too
        services.batch_fail(
            batch_id=batch_id, reason="The batch took longer than the job time limit allows."
        )
        raise
    except DatabaseError:
        logger.exception("batch %s: database error", batch_id)
        connection.close()
        services.batch_fail(
            batch_id=batch_id, reason="The database was unavailable while creating users."
        )
        raise
    except Exception:
        logger.exception("batch %s: unexpected error", batch_id)
        services.batch_fail(batch_id=batch_id, reason="An unexpected error stopped the batch.")
        raise


def batch_users_delete_run(*, batch_id: int, on_progress: ProgressCallback) -> Batch:
    """One run of a deletion (a job); a stopping worker queues the rest for the next one."""
    try:
        return services.batch_users_delete(batch_id=batch_id, on_progress=on_progress)
    except queueing.WorkerShutdown:
        # Deleted chunks are committed: the next worker finishes what is left.
        logger.warning(
            "batch %s: worker shutting down, queueing the rest of the deletion", batch_id
        )
        connection.close()  # the signal may have cut a query short
        batch_users_delete_enqueue(batch_id)
        raise


def batches_reconcile(*, except_batch: int | None = None) -> Reconciled:
    """Enqueue a run for each unfinished batch that no live run holds and no job waits for,
    and a deletion job for each deleting batch whose job is gone."""
    unattended = reconciler.batches_unattended(except_batch=except_batch)
    enqueued = []
    for batch, lacking in unattended.runs:
        logger.info("batch %s: %s run(s) fewer than it wants alive, enqueueing", batch.pk, lacking)
        if batch_enqueue(batch.pk, runs=lacking):
            enqueued.append(batch.pk)
    for batch in unattended.deletions:
        logger.info("batch %s: deletion without a job, enqueueing one", batch.pk)
        if batch_users_delete_enqueue(batch.pk):
            enqueued.append(batch.pk)
    return Reconciled(enqueued=enqueued, look_again_in=unattended.look_again_in)


def database_backup() -> Path:
    """Back the database up into the backup folder, keeping the newest few; BackupError."""
    return backups.backup_create(directory=conf.backup_dir(), keep=conf.backup_keep())


def batch_enqueue(batch_id: int, *, runs: int = 1) -> bool:
    """Enqueue `runs` jobs for the batch, counted on its row first; False (and logged) when
    Redis cannot be reached."""
    return _jobs_enqueue(batch_id, _runs_record(batch_id, runs=runs))


def _runs_record(batch_id: int, *, runs: int) -> list[str]:
    return services.batch_record_enqueued(
        batch_id=batch_id, job_id_for=partial(queueing.batch_run_job_id, batch_id), runs=runs
    )


def _jobs_enqueue(batch_id: int, job_ids: list[str], *, in_worker: bool = False) -> bool:
    try:
        for job_id in job_ids:
            queueing.batch_run_enqueue(batch_id, job_id=job_id, in_worker=in_worker)
    except queueing.QueueUnavailable:
        # The batch stays pending; the reconciler enqueues it once Redis answers again.
        logger.warning("batch %s: Redis unreachable, left pending", batch_id, exc_info=True)
        return False
    return True


def batch_users_delete_enqueue(batch_id: int) -> bool:
    """Enqueue the job deleting the batch's users; False (and logged) when Redis is down."""
    try:
        job_id = queueing.batch_users_delete_enqueue(batch_id)
    except queueing.QueueUnavailable:
        # The batch stays "deleting": the reconciler enqueues it once Redis answers again.
        logger.warning("batch %s: Redis unreachable, deletion not queued", batch_id, exc_info=True)
        return False
    services.batch_record_job(batch_id=batch_id, job_id=job_id)
    return True


def _lease_holders_gone_if_known(
    holders: Collection[services.LeaseHolder],
) -> set[services.LeaseHolder]:
    """The holders judged gone; none while Redis cannot be asked (their leases still run out),
    so that a Redis outage only slows a takeover down."""
    try:
        return queueing.lease_holders_gone(holders)
    except queueing.QueueUnavailable:
        return set()


def _others_reconcile(*, except_batch: int) -> None:
    try:
        reconciled = batches_reconcile(except_batch=except_batch)
    except (queueing.WorkerShutdown, queueing.JobTimedOut):
        raise
    except Exception as error:
        interruption = services.interruption_behind(error)
        if interruption is not None:
            connection.close()
            raise interruption from error
        # Only the look around is missed: the run's own chunks are the database's business.
        logger.warning(
            "batch %s: could not look after the other batches", except_batch, exc_info=True
        )
    else:
        if reconciled.enqueued:
            logger.info("batch %s: re-enqueued batches %s", except_batch, reconciled.enqueued)


def _at_most_every(seconds: float, action: Callable[[], None]) -> Callable[[], None]:
    """`action`, done when called if it was not done in the last `seconds`."""
    last = time.monotonic()

    def maybe() -> None:
        nonlocal last
        if time.monotonic() - last >= seconds:
            last = time.monotonic()
            action()

    return maybe


def _runs_enqueue_on_commit(batch: Batch, *, in_worker: bool) -> None:
    """Count the batch's runs in the caller's transaction (one commit less than on their own)
    and enqueue them once it commits (`in_worker`: to be made in the worker's own process)."""
    job_ids = _runs_record(batch.pk, runs=reconciler.runs_wanted(batch))
    transaction.on_commit(partial(_jobs_enqueue, batch.pk, job_ids, in_worker=in_worker))
