"""Enqueueing after commit, the reconciler, idempotency and limits, on the real Redis."""

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from generator import services, use_cases
from generator.models import Batch, BatchChunk, User
from generator.services import chunks

from .support import run_at_once

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_settings")]


def quiet(batch: Batch, seconds: int = 3600) -> None:
    """Make the batch look as if nothing happened to it for a while."""
    earlier = timezone.now() - timedelta(seconds=seconds)
    Batch.objects.filter(pk=batch.pk).update(created_at=earlier, last_enqueued_at=earlier)


def dead_redis() -> override_settings:
    """Point the queue at a port where no Redis answers."""
    return override_settings(
        RQ_QUEUES={"default": {**settings.RQ_QUEUES["default"], "URL": "redis://127.0.0.1:1/0"}}
    )


def reconciled_once_then_run(batch: Batch, run_worker: Callable[[], None]) -> None:
    """The reconciler enqueues the batch, then nothing (its job is waiting); a worker runs it."""
    assert use_cases.batches_reconcile() == [batch.pk]
    assert use_cases.batches_reconcile() == []
    run_worker()
    batch.refresh_from_db()


def test_submit_enqueues_one_job_after_commit(queue):
    batch = use_cases.batch_submit(requested_by=None, total=80)
    batch.refresh_from_db()
    assert batch.jobs_enqueued == 1
    assert batch.last_job_id == f"batch-{batch.pk}"
    assert queue.job_ids == [batch.last_job_id]


def test_reconcile_enqueues_a_batch_whose_enqueue_failed(queue, run_worker):
    with dead_redis():
        batch = use_cases.batch_submit(requested_by=None, total=90)
    assert queue.count == 0
    quiet(batch)

    reconciled_once_then_run(batch, run_worker)

    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 90


def test_reconcile_enqueues_a_batch_whose_job_redis_lost(queue, redis_connection, run_worker):
    batch = use_cases.batch_submit(requested_by=None, total=70)
    redis_connection.flushdb()  # as a restart without persistence does
    quiet(batch)

    assert use_cases.batches_reconcile() == [batch.pk]
    run_worker()
    assert User.objects.filter(batch=batch).count() == 70


def test_reconcile_leaves_alone_what_is_recent_waiting_running_or_done(queue):
    running = use_cases.batch_submit(requested_by=None, total=50)
    quiet(running)
    queue.empty()
    chunks.chunk_claim(batch_id=running.pk, run_id="alive")
    recent = use_cases.batch_submit(requested_by=None, total=50)
    waiting = use_cases.batch_submit(requested_by=None, total=50)
    quiet(waiting)
    finished = services.batch_create(requested_by=None, total=50)
    services.batch_generate_users(batch_id=finished.pk)
    quiet(finished)

    assert use_cases.batches_reconcile() == []
    assert {recent.pk, waiting.pk} <= {int(job_id.split("-")[1]) for job_id in queue.job_ids}


def test_reconcile_takes_over_a_batch_whose_run_died(queue, run_worker):
    batch = use_cases.batch_submit(requested_by=None, total=50)
    queue.empty()
    chunks.chunk_claim(batch_id=batch.pk, run_id="killed")
    BatchChunk.objects.filter(batch=batch).update(lease_expires_at=timezone.now())
    quiet(batch)

    assert use_cases.batches_reconcile() == [batch.pk]
    run_worker()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert batch.jobs_enqueued == 2
    assert User.objects.filter(batch=batch).count() == 50


def test_resume_finishes_a_failed_batch_exactly(queue, run_worker):
    batch = services.batch_create(requested_by=None, total=300, chunk_size=100)
    services.batch_generate_users(
        batch_id=batch.pk,
        on_progress=lambda progress: services.batch_fail(batch_id=batch.pk, reason="boom"),
    )
    assert use_cases.batch_resume(batch_id=batch.pk).status == Batch.Status.PENDING
    run_worker()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 300


def test_one_idempotency_key_makes_one_batch(queue, generator_user):
    key = uuid.uuid4()
    first = use_cases.batch_submit(requested_by=generator_user, total=60, idempotency_key=key)
    again = use_cases.batch_submit(requested_by=generator_user, total=60, idempotency_key=key)
    assert again.pk == first.pk
    assert Batch.objects.count() == 1
    assert queue.count == 1


def test_active_batches_per_person_are_limited(settings, queue, generator_user):
    settings.GENERATOR_MAX_ACTIVE_BATCHES_PER_USER = 2
    for _ in range(2):
        use_cases.batch_submit(requested_by=generator_user, total=50)
    with pytest.raises(ValidationError, match="already have 2 batches waiting or running"):
        use_cases.batch_submit(requested_by=generator_user, total=50)
    assert Batch.objects.count() == 2
    # The operator's command line is not a person's request.
    use_cases.batch_submit(requested_by=generator_user, total=50, enforce_limits=False)
    assert queue.count == 3


def test_users_per_day_are_limited(settings, queue, generator_user):
    settings.GENERATOR_MAX_USERS_PER_DAY = 120
    use_cases.batch_submit(requested_by=generator_user, total=100)
    with pytest.raises(ValidationError, match="120 users a day; 20 are left today"):
        use_cases.batch_submit(requested_by=generator_user, total=50)
    assert Batch.objects.count() == 1


def test_concurrent_requests_of_one_person_respect_the_limit(settings, queue, generator_user):
    settings.GENERATOR_MAX_ACTIVE_BATCHES_PER_USER = 3
    outcomes: list[str] = []

    def request() -> None:
        try:
            use_cases.batch_submit(requested_by=generator_user, total=50)
            outcomes.append("accepted")
        except ValidationError:
            outcomes.append("refused")
        finally:
            connection.close()

    run_at_once(request, 12)

    assert sorted(outcomes) == ["accepted"] * 3 + ["refused"] * 9
    assert Batch.objects.count() == 3


def test_reconcile_enqueues_a_deletion_whose_job_redis_lost(queue, redis_connection, run_worker):
    batch = use_cases.batch_submit(requested_by=None, total=60)
    run_worker()
    use_cases.batch_users_delete_submit(batch_id=batch.pk)
    redis_connection.flushdb()  # as a restart without persistence does
    quiet(batch)

    reconciled_once_then_run(batch, run_worker)

    assert batch.status == Batch.Status.DELETED
    assert batch.deleted_count == 60
    assert not User.objects.filter(batch=batch).exists()
