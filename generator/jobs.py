"""RQ entry points: thin wrappers the worker runs around one use case each.

RQ stores each job's function by its dotted path (generator.jobs.batch_run and so on) in
Redis and in the cron registrations: these names are a contract with what is already queued.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

from redis.exceptions import RedisError
from rq import get_current_job
from rq.job import Job

from . import use_cases
from .models import Batch

logger = logging.getLogger(__name__)


def batch_run(batch_id: int) -> dict[str, Any]:
    """Fill the batch's free chunks, reporting progress to the dashboard through job.meta."""
    job = get_current_job()
    # Unique per execution: the dashboard can requeue a job id that is still running.
    run_id = f"{job.id if job else 'run'}:{uuid.uuid4().hex[:8]}"
    # The work horse outlives a worker killed with SIGKILL (it has a process group of its
    # own), but that worker's leases are void and taken over: the run must stop, not race.
    # (A small batch's run is made in the worker itself: its parent is then the worker's,
    # which changes only if that dies, and the run hands its chunks back: no harm.)
    worker_pid = os.getppid()

    def report(batch: Batch) -> None:
        _progress_show(job, batch.pk, created=batch.created_count, total=batch.total)

    batch = use_cases.batch_run(
        batch_id=batch_id,
        run_id=run_id,
        on_progress=report,
        holder=(job.worker_name or "", job.id) if job else ("", ""),
        keep_going=lambda: os.getppid() == worker_pid,
    )
    return {"batch_id": batch.pk, "status": batch.status, "created": batch.created_count}


def batches_reconcile() -> dict[str, Any]:
    """Enqueue runs for batches nothing is working on (scheduled, and at worker start)."""
    return {"enqueued": use_cases.batches_reconcile().enqueued}


def database_backup() -> dict[str, Any]:
    """Back the database up into the backup folder, keeping the newest few (RQ's cron runs it)."""
    path = use_cases.database_backup()
    return {"path": str(path), "bytes": path.stat().st_size}


def batch_users_delete(batch_id: int) -> dict[str, Any]:
    """Delete the users of a batch marked for deletion, reporting progress through job.meta."""
    job = get_current_job()

    def report(batch: Batch) -> None:
        _progress_show(job, batch.pk, deleted=batch.deleted_count, total=batch.created_count)

    batch = use_cases.batch_users_delete_run(batch_id=batch_id, on_progress=report)
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
