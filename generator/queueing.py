"""Putting batch runs on the RQ queue: after commit, under job ids of our own."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from functools import partial

import django_rq
from django.db import connection, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.queue import Queue

from . import conf, selectors, services
from .models import Batch, User

logger = logging.getLogger(__name__)

# By name, so this module and jobs.py need not import each other.
BATCH_RUN = "generator.jobs.batch_run"
BATCH_USERS_DELETE = "generator.jobs.batch_users_delete"
WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def batch_queue() -> Queue:
    return django_rq.get_queue(conf.queue_name())


def runs_for(batch: Batch) -> int:
    """How many runs to start: several for a big batch on PostgreSQL, else one.

    SQLite has a single writer, so parallel runs would only queue up behind its lock.
    """
    if connection.vendor == "sqlite" or batch.total <= conf.fanout_threshold():
        return 1
    return max(1, min(conf.fanout_jobs(), batch.chunks.count()))


def batch_enqueue(batch_id: int, *, runs: int = 1) -> bool:
    """Enqueue `runs` jobs for the batch; False (and logged) when Redis cannot be reached."""
    queue = batch_queue()
    try:
        for _ in range(runs):
            job_id = services.batch_record_enqueued(batch_id=batch_id)
            queue.enqueue(
                BATCH_RUN,
                batch_id,
                job_id=job_id,
                job_timeout=conf.job_timeout(),
                description=f"Generate the users of batch #{batch_id}",
            )
    except RedisError:
        # The batch stays pending; the reconciler enqueues it once Redis answers again.
        logger.warning("batch %s: Redis unreachable, left pending", batch_id, exc_info=True)
        return False
    return True


@sensitive_variables("password")
def batch_submit(
    *,
    requested_by: User | None,
    total: int,
    password: str = "",
    idempotency_key: uuid.UUID | None = None,
    enforce_limits: bool = True,
    realistic_names: bool = False,
    seed: int | None = None,
) -> Batch:
    """Record a batch, then enqueue its runs once the row is committed.

    A person's request goes through their limits and idempotency key (ValidationError when
    refused); the operator's command line passes enforce_limits=False.
    """
    with transaction.atomic():
        if requested_by is None or not enforce_limits:
            batch = services.batch_create(
                requested_by=requested_by,
                total=total,
                password=password,
                realistic_names=realistic_names,
                seed=seed,
            )
            created = True
        else:
            batch, created = services.batch_request(
                requested_by=requested_by,
                total=total,
                password=password,
                idempotency_key=idempotency_key,
                realistic_names=realistic_names,
                seed=seed,
            )
        if created:
            # After commit: a worker must never pick up a batch it cannot read yet.
            transaction.on_commit(partial(batch_enqueue, batch.pk, runs=runs_for(batch)))
    return batch


def batch_resume(*, batch_id: int, resumed_by: User | None = None) -> Batch:
    """Reopen a failed or cancelled batch and enqueue runs to finish it.

    Raises ValidationError when the person resuming it is at their limit of active batches.
    """
    with transaction.atomic():
        batch = services.batch_reopen(batch_id=batch_id, reopened_by=resumed_by)
        if batch.status == Batch.Status.PENDING:
            transaction.on_commit(partial(batch_enqueue, batch.pk, runs=runs_for(batch)))
    return batch


def job_is_waiting(queue: Queue, job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in WAITING


def batches_reconcile() -> list[int]:
    """Enqueue a run for each unfinished batch that no live run holds and no job waits for,
    and a deletion job for each deleting batch whose job is gone.

    That covers a batch whose enqueue failed (Redis down at commit), whose job Redis lost
    (a restart without persistence), and whose run died (a killed worker: its chunk leases
    run out). An extra run is harmless: it finds nothing to claim and ends.
    """
    queue = batch_queue()
    quiet_since = timezone.now() - timedelta(seconds=conf.reconcile_grace_seconds())
    enqueued = []
    for batch in selectors.batches_without_a_live_run(quiet_since=quiet_since):
        if batch.last_job_id and job_is_waiting(queue, batch.last_job_id):
            continue
        logger.info("batch %s: no live run, enqueueing one", batch.pk)
        if batch_enqueue(batch.pk, runs=runs_for(batch)):
            enqueued.append(batch.pk)
    for batch in selectors.batches_deleting(quiet_since=quiet_since):
        # A deletion holds no lease: its job is alive while RQ has it waiting or started
        # (a killed worker's job leaves "started" at RQ's next maintenance).
        if batch.last_job_id and job_is_alive(queue, batch.last_job_id):
            continue
        logger.info("batch %s: deletion without a job, enqueueing one", batch.pk)
        if batch_users_delete_enqueue(batch.pk):
            enqueued.append(batch.pk)
    return enqueued


def job_is_alive(queue: Queue, job_id: str) -> bool:
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in {*WAITING, JobStatus.STARTED}


def batch_users_delete_enqueue(batch_id: int) -> bool:
    """Enqueue the job deleting the batch's users; False (and logged) when Redis is down."""
    queue = batch_queue()
    job_id = Batch.objects.get(pk=batch_id).delete_job_id
    try:
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
        services.batch_record_job(batch_id=batch_id, job_id=job_id)
    except RedisError:
        # The batch stays "deleting": the reconciler enqueues it once Redis answers again.
        logger.warning("batch %s: Redis unreachable, deletion not queued", batch_id, exc_info=True)
        return False
    return True


def batch_users_delete_submit(*, batch_id: int) -> Batch:
    """Mark the batch for deletion and enqueue the job once that is committed.

    Raises ValidationError while the batch is still creating users.
    """
    with transaction.atomic():
        batch = services.batch_users_delete_request(batch_id=batch_id)
        if batch.status == Batch.Status.DELETING:
            transaction.on_commit(partial(batch_users_delete_enqueue, batch.pk))
    return batch
