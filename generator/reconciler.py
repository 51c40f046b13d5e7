"""The reconciler's judgement: which batches no live run or job is working on.

That covers a batch whose enqueue failed (Redis down at commit), whose job Redis lost (a
restart without persistence), and whose run died (a killed worker or work horse: its chunk
leases name a worker that no longer beats, or no longer runs that job). use_cases
.batches_reconcile enqueues what this finds; an extra run is harmless, it finds nothing to
claim and ends.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from . import conf, queueing
from .models import Batch, BatchChunk

# A batch's run jobs looked at, newest first: enough for any fan-out and its restarts.
RUN_JOBS_LOOKED_AT = 50


@dataclass(frozen=True)
class Unattended:
    """What wants a job now: each batch with the number of runs it lacks, and the deleting
    batches without a job; and when to look again at those whose job may still be on its way
    (committed, not yet in Redis)."""

    runs: list[tuple[Batch, int]] = field(default_factory=list)
    deletions: list[Batch] = field(default_factory=list)
    look_again_in: float | None = None


def batches_unattended(*, except_batch: int | None = None) -> Unattended:
    now = timezone.now()
    in_flight_since = now - timedelta(seconds=conf.reconcile_grace_seconds())
    others = Batch.objects.exclude(pk=except_batch) if except_batch else Batch.objects.all()
    generating = list(
        others.active()
        .annotate(chunks_left=Count("chunks", filter=Q(chunks__done=False)))
        .order_by("created_at")
    )
    holders = live_lease_holders([batch.pk for batch in generating], now=now)
    # A deletion holds no lease: its job is alive while it waits or a live worker runs it.
    deleting = list(others.deleting().order_by("created_at"))
    seen = queueing.jobs_seen(
        [job_id for batch in generating for job_id in _run_job_ids(batch)]
        + [batch.last_job_id for batch in deleting]
    )
    attended = seen.attended
    runs: list[tuple[Batch, int]] = []
    deletions: list[Batch] = []
    in_flight: list[Batch] = []
    for batch in generating:
        # A run holding a live lease counts even when Redis lost its job, or it runs outside
        # RQ's jobs.
        live_runs = max(len(attended.intersection(_run_job_ids(batch))), holders[batch.pk])
        lacking = min(runs_wanted(batch), batch.chunks_left) - live_runs
        if lacking <= 0:
            continue
        if batch.last_job_id not in seen.found and _enqueued_at(batch) >= in_flight_since:
            in_flight.append(batch)
        else:
            runs.append((batch, lacking))
    for deletion in deleting:
        if deletion.last_job_id in attended:
            continue
        on_its_way = deletion.last_job_id not in seen.found
        if on_its_way and _enqueued_at(deletion) >= in_flight_since:
            in_flight.append(deletion)
        else:
            deletions.append(deletion)
    look_again_in = None
    if in_flight:
        oldest = min(_enqueued_at(batch) for batch in in_flight)
        look_again_in = max(0.0, (oldest - in_flight_since).total_seconds())
    return Unattended(runs=runs, deletions=deletions, look_again_in=look_again_in)


def runs_wanted(batch: Batch) -> int:
    """How many runs a batch wants at once: several for a big batch on PostgreSQL, else one.

    SQLite has a single writer, so parallel runs would only queue up behind its lock.
    """
    if connection.vendor == "sqlite" or batch.total <= conf.fanout_threshold():
        return 1
    return max(1, min(conf.fanout_jobs(), batch.chunks.count()))


def runs_in_worker(batch: Batch) -> bool:
    """Whether a new batch is small enough for its first runs to be made in the worker's own
    process, without a forked work horse (GENERATOR_IN_WORKER_MAX_TOTAL says why)."""
    return batch.total <= conf.in_worker_max_total()


def _run_job_ids(batch: Batch) -> list[str]:
    first = max(1, batch.jobs_enqueued - RUN_JOBS_LOOKED_AT + 1)
    return [
        queueing.batch_run_job_id(batch.pk, number)
        for number in range(first, batch.jobs_enqueued + 1)
    ]


def live_lease_holders(batch_ids: list[int], *, now: datetime) -> collections.Counter[int]:
    """How many live runs hold chunk leases of each batch."""
    leases = set(
        BatchChunk.objects.filter(batch_id__in=batch_ids, done=False, lease_expires_at__gt=now)
        .exclude(lease_owner="")
        .values_list("batch_id", "lease_owner", "lease_worker", "lease_job")
    )
    # A lease taken outside RQ's workers names none: only its expiry tells.
    gone = queueing.lease_holders_gone({(worker, job) for _, _, worker, job in leases if worker})
    live = {
        (batch_id, run_id)
        for batch_id, run_id, worker, job in leases
        if not worker or (worker, job) not in gone
    }
    return collections.Counter(batch_id for batch_id, _ in live)


def _enqueued_at(batch: Batch) -> datetime:
    return batch.last_enqueued_at or batch.created_at
