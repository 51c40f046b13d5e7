"""The RQ adapter: the queue, the jobs' names and ids, enqueueing, and what became of a job.

It knows RQ and Redis and nothing above it: the use cases call it, and it calls no service,
use case or job. It names the job functions by the dotted path RQ stores in Redis, which
generator.jobs defines and lists in RQ_ENTRY_POINTS, the worker's allowlist.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import django_rq
from redis.exceptions import RedisError
from rq.exceptions import ShutDownImminentException
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import JobTimeoutException

from . import conf
from .models import Batch

BATCH_RUN = "generator.jobs.batch_run"
BATCH_USERS_DELETE = "generator.jobs.batch_users_delete"
WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}

# What RQ and Redis raise, under names the callers can catch without knowing either.
QueueUnavailable = RedisError
# Raised inside a running job: the worker is stopping (SIGTERM), or the job's time is up.
WorkerShutdown = ShutDownImminentException
JobTimedOut = JobTimeoutException


def batch_queue() -> Queue:
    return django_rq.get_queue(conf.queue_name())


# Job ids are ours, not RQ's: django-rq enqueues on commit and returns no job inside a
# transaction, so a batch's job must be findable from the batch alone.


def batch_run_job_id(batch_id: int, number: int) -> str:
    """The id of the batch's `number`th run job (counted on the batch row)."""
    return f"batch-{batch_id}" if number == 1 else f"batch-{batch_id}-{number}"


def batch_job_id(batch: Batch) -> str:
    """The id of the batch's latest RQ job (its first run's before any is enqueued)."""
    return batch.last_job_id or batch_run_job_id(batch.pk, 1)


def batch_users_delete_job_id(batch_id: int) -> str:
    # One id for every request: a repeated request replaces a job that finished or died.
    return f"batch-{batch_id}-delete"


def batch_run_enqueue(batch_id: int, *, job_id: str) -> None:
    """Enqueue one run of the batch; QueueUnavailable when Redis cannot be reached."""
    batch_queue().enqueue(
        BATCH_RUN,
        batch_id,
        job_id=job_id,
        job_timeout=conf.job_timeout(),
        description=f"Generate the users of batch #{batch_id}",
    )


def batch_users_delete_enqueue(batch_id: int) -> str:
    """Enqueue the job deleting the batch's users and return its id; QueueUnavailable when
    Redis cannot be reached."""
    queue = batch_queue()
    job_id = batch_users_delete_job_id(batch_id)
    if Job.exists(job_id, connection=queue.connection):
        # Never overwrite a job that may still be running: a later run gets its own id.
        job_id = f"{job_id}-{uuid.uuid4().hex[:8]}"
    queue.enqueue(
        BATCH_USERS_DELETE,
        batch_id,
        job_id=job_id,
        job_timeout=conf.job_timeout(),
        description=f"Delete the users of batch #{batch_id}",
    )
    return job_id


def jobs_waiting(job_ids: Iterable[str]) -> set[str]:
    """Those of the jobs that wait in the queue (queued, scheduled or deferred)."""
    return _jobs_in(job_ids, WAITING)


def jobs_alive(job_ids: Iterable[str]) -> set[str]:
    """Those of the jobs that wait or run (a killed worker's job stays "started" until RQ's
    next maintenance)."""
    return _jobs_in(job_ids, {*WAITING, JobStatus.STARTED})


def _jobs_in(job_ids: Iterable[str], statuses: set[JobStatus]) -> set[str]:
    wanted = [job_id for job_id in job_ids if job_id]
    if not wanted:
        return set()
    queue = batch_queue()
    jobs = Job.fetch_many(wanted, connection=queue.connection, serializer=queue.serializer)
    return {job.id for job in jobs if job is not None and job.get_status(refresh=False) in statuses}
