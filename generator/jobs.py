"""RQ entry points: thin wrappers the worker runs around one service each."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import DatabaseError, connection
from redis.exceptions import RedisError
from rq import get_current_job
from rq.exceptions import ShutDownImminentException
from rq.job import Job
from rq.timeouts import JobTimeoutException

from . import backups, conf, queueing, services
from .models import Batch

logger = logging.getLogger(__name__)


def batch_run(batch_id: int) -> dict[str, Any]:
    """Fill the batch's free chunks, reporting progress to the dashboard through job.meta."""
    job = get_current_job()
    # Unique per execution: the dashboard can requeue a job id that is still running.
    run_id = f"{job.id if job else 'run'}:{uuid.uuid4().hex[:8]}"

    def report(batch: Batch) -> None:
        _progress_show(job, batch.pk, created=batch.created_count, total=batch.total)

    try:
        batch = services.batch_generate_users(batch_id=batch_id, run_id=run_id, on_progress=report)
    except ShutDownImminentException:
        # A platform restart (SIGTERM): hand the chunks over and queue the rest for the next
        # worker at once, instead of waiting for the leases to run out.
        logger.warning("batch %s: worker shutting down, handing the batch over", batch_id)
        # Raised by a signal handler, it may have cut a query short and left the connection
        # in the middle of it: the hand-over needs a fresh one.
        connection.close()
        services.batch_release(batch_id=batch_id, run_id=run_id)
        queueing.batch_enqueue(batch_id)
        raise
    except JobTimeoutException:
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
    return {"batch_id": batch.pk, "status": batch.status, "created": batch.created_count}


def batches_reconcile() -> dict[str, Any]:
    """Enqueue runs for batches nothing is working on (scheduled, and at worker start)."""
    return {"enqueued": queueing.batches_reconcile()}


def database_backup() -> dict[str, Any]:
    """Back the database up into the backup folder, keeping the newest few (RQ's cron runs it)."""
    path = backups.backup_create(directory=conf.backup_dir(), keep=conf.backup_keep())
    return {"path": str(path), "bytes": path.stat().st_size}


def batch_users_delete(batch_id: int) -> dict[str, Any]:
    """Delete the users of a batch marked for deletion, reporting progress through job.meta."""
    job = get_current_job()

    def report(batch: Batch) -> None:
        _progress_show(job, batch.pk, deleted=batch.deleted_count, total=batch.created_count)

    try:
        batch = services.batch_users_delete(batch_id=batch_id, on_progress=report)
    except ShutDownImminentException:
        # Deleted chunks are committed: the next worker finishes what is left.
        logger.warning(
            "batch %s: worker shutting down, queueing the rest of the deletion", batch_id
        )
        connection.close()  # the signal may have cut a query short
        queueing.batch_users_delete_enqueue(batch_id)
        raise
    return {"batch_id": batch.pk, "status": batch.status, "deleted": batch.deleted_count}


def _progress_show(job: Job | None, batch_id: int, **figures: int) -> None:
    """Put a run's progress in job.meta, where the dashboard shows it."""
    if job is None:
        return
    job.meta.update(figures)
    try:
        job.save_meta()
    except RedisError:
        # Only the dashboard's figure is lost: the progress itself is in the database, so a
        # Redis restart must not stop the run.
        logger.warning("batch %s: progress not reported, Redis unreachable", batch_id)


# The only functions the worker runs: generator.rq_guard refuses any other name found in Redis.
# Add a new entry point here, or its jobs fail as refused.
RQ_ENTRY_POINTS = (batch_run, batches_reconcile, database_backup, batch_users_delete)
