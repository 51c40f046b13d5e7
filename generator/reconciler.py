"""The reconciler's judgement: which batches no live run or job is working on.

That covers a batch whose enqueue failed (Redis down at commit), whose job Redis lost (a
restart without persistence), and whose run died (a killed worker: its chunk leases run
out). use_cases.batches_reconcile enqueues what this finds; an extra run is harmless, it
finds nothing to claim and ends.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from . import conf, queueing
from .models import Batch, BatchChunk


def batches_unattended() -> tuple[list[Batch], list[Batch]]:
    """The unfinished batches that want a run, and the deleting ones that want a job."""
    quiet_since = timezone.now() - timedelta(seconds=conf.reconcile_grace_seconds())
    generating = list(batches_without_a_live_run(quiet_since=quiet_since))
    waiting = queueing.jobs_waiting(batch.last_job_id for batch in generating)
    deleting = list(batches_deleting(quiet_since=quiet_since))
    # A deletion holds no lease: its job is alive while RQ has it waiting or started.
    alive = queueing.jobs_alive(batch.last_job_id for batch in deleting)
    return (
        [batch for batch in generating if batch.last_job_id not in waiting],
        [batch for batch in deleting if batch.last_job_id not in alive],
    )


def batches_without_a_live_run(*, quiet_since: datetime) -> QuerySet[Batch]:
    """Unfinished batches with no chunk under a live lease and no job enqueued lately."""
    live_lease = BatchChunk.objects.filter(
        batch=OuterRef("pk"), done=False, lease_expires_at__gt=timezone.now()
    )
    return (
        Batch.objects.active()
        .filter(
            Q(last_enqueued_at__lt=quiet_since)
            | Q(last_enqueued_at__isnull=True, created_at__lt=quiet_since)
        )
        .exclude(Exists(live_lease))
        .order_by("created_at")
    )


def batches_deleting(*, quiet_since: datetime) -> QuerySet[Batch]:
    """Batches whose users are being deleted and that got no job lately."""
    return (
        Batch.objects.deleting()
        .filter(Q(last_enqueued_at__lt=quiet_since) | Q(last_enqueued_at__isnull=True))
        .order_by("created_at")
    )
