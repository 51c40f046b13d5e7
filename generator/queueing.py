"""The RQ adapter: the queue, the jobs' names and ids, enqueueing, and what became of a job.

It knows RQ and Redis and nothing above it: the use cases call it, and it calls no service,
use case or job. It names the job functions by the dotted path RQ stores in Redis, which
generator.jobs defines and lists in RQ_ENTRY_POINTS, the worker's allowlist.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django_rq
import django_rq.settings
from django_rq.connection_utils import get_redis_connection
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError, ShutDownImminentException
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import JobTimeoutException

from . import conf
from .models import Batch, LeaseHolder

BATCH_RUN = "generator.jobs.batch_run"
BATCH_USERS_DELETE = "generator.jobs.batch_users_delete"
# In a run job's meta: run it in the worker's own process, without a work horse.
RUNS_IN_WORKER = "runs_in_worker"
WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}

# What RQ and Redis raise, under names the callers can catch without knowing either.
QueueUnavailable = RedisError
# Raised inside a running job: the worker is stopping (SIGTERM), or the job's time is up.
WorkerShutdown = ShutDownImminentException
JobTimedOut = JobTimeoutException


# A worker's own heartbeat, beside RQ's, with an expiry of a few beats: a worker that stops
# beating (killed, frozen, cut off) drops out by Redis's clock alone, no clocks compared.
WORKER_BEAT_KEY = "generator:worker-beat:{}"
BEATS_MISSED_FOR_DEATH = 3


def batch_queue() -> Queue:
    return _queue(conf.queue_name())


def maintenance_queue() -> Queue:
    """The reconcile and backup jobs' queue, served by a worker of its own."""
    return _queue(conf.maintenance_queue_name())


def _queue(name: str) -> Queue:
    return django_rq.get_queue(name, connection=_redis(django_rq.settings.QUEUES[name]))


_redis_clients: dict[str, Redis] = {}


def _redis(queue_settings: dict[str, Any]) -> Redis:
    """One Redis client (and its pool of connections) per process and server.

    django-rq makes a new client, and so a new connection, for each queue it is asked for: a
    connect, a handshake and a SELECT before every enqueue (measured: an enqueue 0.4 ms on a
    connection kept, 2.0 ms on a new one; more over TLS). The pool is safe across threads and
    across the worker's fork: redis-py gives a forked process connections of its own. Keyed by
    the queue's whole settings (a sentinel's password is in SENTINEL_KWARGS), so that a test
    pointing RQ_QUEUES elsewhere gets its own.
    """
    key = repr(sorted(queue_settings.items()))
    if key not in _redis_clients:
        _redis_clients[key] = get_redis_connection(queue_settings)
    return _redis_clients[key]


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


def batch_run_enqueue(batch_id: int, *, job_id: str, in_worker: bool = False) -> None:
    """Enqueue one run of the batch (`in_worker`: to run in the worker's own process, without
    a work horse); QueueUnavailable when Redis cannot be reached."""
    batch_queue().enqueue(
        BATCH_RUN,
        batch_id,
        job_id=job_id,
        job_timeout=conf.job_timeout(),
        description=f"Generate the users of batch #{batch_id}",
        meta={RUNS_IN_WORKER: True} if in_worker else None,
    )


def job_runs_in_worker(job: Job) -> bool:
    """Whether the job is to run in the worker's own process (a planted flag only moves one
    of the app's own runs out of its work horse). Reads the job's data: it may raise what
    RQ's decoding raises."""
    meta = job.meta
    return (
        isinstance(meta, dict) and meta.get(RUNS_IN_WORKER) is True and job.func_name == BATCH_RUN
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


def batch_of_stopped_run(job: Job) -> int | None:
    """The batch of a run job that was stopped (the dashboard's Stop, RQ's stop-job command),
    else None; QueueUnavailable when Redis cannot be reached."""
    # The status first: it is one Redis read, the job's name needs its data read back.
    if job.get_status() != JobStatus.STOPPED or job.func_name != BATCH_RUN:
        return None
    return int(job.args[0])


@dataclass(frozen=True)
class JobsSeen:
    """Of the jobs asked about: those Redis has, and those it has that are attended (waiting
    in the queue, or run right now by a live worker)."""

    found: set[str]
    attended: set[str]


def jobs_seen(job_ids: Iterable[str]) -> JobsSeen:
    """What Redis knows of the jobs. A job "started" by a worker that died stays so until
    RQ's next maintenance: that does not count as attended."""
    wanted = [job_id for job_id in job_ids if job_id]
    if not wanted:
        return JobsSeen(found=set(), attended=set())
    jobs = _jobs_fetch(wanted)
    waiting = {job.id for job in jobs if job.get_status(refresh=False) in WAITING}
    running = {
        (job.worker_name or "", job.id)
        for job in jobs
        if job.get_status(refresh=False) == JobStatus.STARTED
    }
    alive = {job_id for _, job_id in running - lease_holders_gone(running)}
    return JobsSeen(found={job.id for job in jobs}, attended=waiting | alive)


def _jobs_fetch(job_ids: list[str]) -> list[Job]:
    """The jobs Redis holds whole. After a restart a running job's progress report leaves a
    hash with its meta alone (RQ's Job.fetch_many raises on it): no job, as far as we know."""
    queue = batch_queue()
    with queue.connection.pipeline() as pipeline:
        for job_id in job_ids:
            pipeline.hgetall(Job.key_for(job_id))
        hashes = pipeline.execute()
    jobs = []
    for job_id, fields in zip(job_ids, hashes, strict=True):
        if not fields:
            continue
        job = Job(job_id, connection=queue.connection, serializer=queue.serializer)
        try:
            job.restore(fields)
        except NoSuchJobError:
            continue
        jobs.append(job)
    return jobs


def lease_holders_gone(holders: Collection[LeaseHolder]) -> set[LeaseHolder]:
    """Those of the (worker, job) holders whose worker is dead or no longer runs that job."""
    named = [holder for holder in holders if holder[0]]
    gone = {holder for holder in holders if not holder[0]}
    if not named:
        return gone
    beats = batch_queue().connection.mget([WORKER_BEAT_KEY.format(name) for name, _ in named])
    return gone | {
        holder for holder, beat in zip(named, beats, strict=True) if not _beats_for(beat, holder)
    }


def worker_beat(
    connection: Redis | Pipeline, *, worker_name: str, worker_pid: int, job_id: str
) -> None:
    """Say that the worker lives and runs `job_id` ("" when idle), for a few beats' time."""
    ttl = BEATS_MISSED_FOR_DEATH * conf.worker_heartbeat_seconds() + 1
    beat = {"host": _this_host(), "pid": worker_pid, "job": job_id}
    connection.set(WORKER_BEAT_KEY.format(worker_name), json.dumps(beat), ex=ttl)


def _beats_for(beat: bytes | str | None, holder: LeaseHolder) -> bool:
    if beat is None:
        return False
    fields = json.loads(beat)
    if fields["job"] != holder[1]:
        return False  # its work horse died, or it went on to another job
    # On its own host a worker whose process is gone is dead now, not a few beats later.
    return fields["host"] != _this_host() or _process_alive(fields["pid"])


@functools.cache
def _this_host() -> str:
    """This machine and PID namespace: where a worker's process id means the same process."""
    parts = [socket.gethostname()]
    # Not on Linux, the host name alone.
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text())
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "/".join(part.strip() for part in parts)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process, alive
    try:
        # A killed process its parent has not reaped yet is a zombie: dead all the same.
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}
