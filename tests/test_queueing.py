"""Enqueueing after commit, the reconciler, idempotency and limits, on the real Redis."""

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from rq.job import JobStatus

from generator import queueing, services, use_cases
from generator.models import Batch, BatchChunk, User
from generator.services import chunks

from .support import run_at_once, wait_for

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
    assert use_cases.batches_reconcile().enqueued == [batch.pk]
    assert use_cases.batches_reconcile().enqueued == []
    run_worker()
    batch.refresh_from_db()


def test_submit_enqueues_one_job_after_commit(queue):
    batch = use_cases.batch_submit(requested_by=None, total=80)
    batch.refresh_from_db()
    assert batch.jobs_enqueued == 1
    assert batch.last_job_id == f"batch-{batch.pk}"
    assert queue.job_ids == [batch.last_job_id]


def test_enqueues_share_one_redis_connection_instead_of_opening_one_each(queue, redis_connection):
    use_cases.batch_submit(requested_by=None, total=80)  # the process's first, if it is
    opened = redis_connection.info("stats")["total_connections_received"]
    for _ in range(3):
        use_cases.batch_submit(requested_by=None, total=80)
    # The tests' own connection asked INFO on one it already had.
    assert redis_connection.info("stats")["total_connections_received"] == opened
    assert queue.count == 4


def test_a_resumed_small_batch_gets_a_work_horse_so_it_can_be_stopped_again(queue):
    batch = use_cases.batch_submit(requested_by=None, total=80)
    assert queueing.job_runs_in_worker(queue.fetch_job(queueing.batch_job_id(batch)))
    services.batch_fail(batch_id=batch.pk, reason="stopped from the dashboard")

    use_cases.batch_resume(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.last_job_id == f"batch-{batch.pk}-2"
    assert not queueing.job_runs_in_worker(queue.fetch_job(batch.last_job_id))


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
    assert queueing.job_runs_in_worker(queue.fetch_job(queueing.batch_job_id(batch)))
    redis_connection.flushdb()  # as a restart without persistence does
    quiet(batch)

    assert use_cases.batches_reconcile().enqueued == [batch.pk]
    batch.refresh_from_db()
    # A run queued again, after a fault, gets a work horse: isolated, and stoppable.
    assert not queueing.job_runs_in_worker(queue.fetch_job(queueing.batch_job_id(batch)))
    run_worker()
    assert User.objects.filter(batch=batch).count() == 70


def test_reconcile_leaves_alone_what_is_recent_waiting_running_or_done(queue):
    running = use_cases.batch_submit(requested_by=None, total=50)
    quiet(running)
    queue.empty()
    chunks.chunk_claim(batch_id=running.pk, lease=chunks.Lease(run_id="alive"))
    recent = use_cases.batch_submit(requested_by=None, total=50)
    waiting = use_cases.batch_submit(requested_by=None, total=50)
    quiet(waiting)
    finished = services.batch_create(requested_by=None, total=50)
    services.batch_generate_users(batch_id=finished.pk)
    quiet(finished)

    assert use_cases.batches_reconcile().enqueued == []
    assert {recent.pk, waiting.pk} <= {int(job_id.split("-")[1]) for job_id in queue.job_ids}


def test_reconcile_takes_over_a_batch_whose_run_died(queue, run_worker):
    batch = use_cases.batch_submit(requested_by=None, total=50)
    queue.empty()
    chunks.chunk_claim(batch_id=batch.pk, lease=chunks.Lease(run_id="killed"))
    BatchChunk.objects.filter(batch=batch).update(lease_expires_at=timezone.now())
    quiet(batch)

    assert use_cases.batches_reconcile().enqueued == [batch.pk]
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


def finished_process_id() -> int:
    """The id of a process that has exited (and been reaped): no process has it now."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_lease_holder_lives_while_its_worker_beats_and_runs_its_job(queue, redis_connection):
    queueing.worker_beat(redis_connection, worker_name="alive", worker_pid=os.getpid(), job_id="j1")
    queueing.worker_beat(
        redis_connection, worker_name="killed", worker_pid=finished_process_id(), job_id="j2"
    )
    queueing.worker_beat(
        redis_connection, worker_name="moved-on", worker_pid=os.getpid(), job_id=""
    )
    # Elsewhere, a process id means nothing here: only the beat tells.
    redis_connection.set(
        queueing.WORKER_BEAT_KEY.format("remote"),
        json.dumps({"host": "another-machine", "pid": finished_process_id(), "job": "j5"}),
    )
    holders = {
        ("alive", "j1"),
        ("killed", "j2"),
        ("moved-on", "j3"),
        ("never-beat", "j4"),
        ("remote", "j5"),
    }

    assert queueing.lease_holders_gone(holders) == {
        ("killed", "j2"),
        ("moved-on", "j3"),
        ("never-beat", "j4"),
    }


def test_a_beat_lasts_three_heartbeats(queue, redis_connection, settings):
    settings.GENERATOR_WORKER_HEARTBEAT_SECONDS = 4
    queueing.worker_beat(redis_connection, worker_name="w", worker_pid=os.getpid(), job_id="j")
    assert redis_connection.ttl(queueing.WORKER_BEAT_KEY.format("w")) == 13


def test_a_worker_killed_but_not_yet_reaped_is_dead(queue, redis_connection):
    zombie = subprocess.Popen(["true"])
    try:
        wait_for(
            lambda: (
                Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            ),
            "the process is a zombie",
        )
        queueing.worker_beat(redis_connection, worker_name="z", worker_pid=zombie.pid, job_id="j")
        assert queueing.lease_holders_gone({("z", "j")}) == {("z", "j")}
    finally:
        zombie.wait()


def test_a_job_counts_as_attended_while_it_waits_or_a_live_worker_runs_it(queue, redis_connection):
    waiting = queue.enqueue(queueing.BATCH_RUN, 1, job_id="waiting")
    running = queue.enqueue(queueing.BATCH_RUN, 2, job_id="running")
    orphaned = queue.enqueue(queueing.BATCH_RUN, 3, job_id="orphaned")
    for job, worker in ((running, "alive"), (orphaned, "killed")):
        job.worker_name = worker
        job.set_status(JobStatus.STARTED)
        job.save()
    queueing.worker_beat(
        redis_connection, worker_name="alive", worker_pid=os.getpid(), job_id="running"
    )
    queueing.worker_beat(
        redis_connection, worker_name="killed", worker_pid=finished_process_id(), job_id="orphaned"
    )
    assert waiting.get_status() == JobStatus.QUEUED

    assert queueing.jobs_seen(["waiting", "running", "orphaned", "lost"]) == queueing.JobsSeen(
        found={"waiting", "running", "orphaned"}, attended={"waiting", "running"}
    )


def test_reconcile_takes_over_at_once_a_batch_whose_worker_died(queue, redis_connection):
    dead = use_cases.batch_submit(requested_by=None, total=50)
    live = use_cases.batch_submit(requested_by=None, total=50)
    quiet(dead)
    quiet(live)
    queue.empty()
    for batch, worker, pid in (
        (dead, "killed", finished_process_id()),
        (live, "alive", os.getpid()),
    ):
        job_id = f"batch-{batch.pk}"
        queueing.worker_beat(redis_connection, worker_name=worker, worker_pid=pid, job_id=job_id)
        claimed = chunks.chunk_claim(
            batch_id=batch.pk, lease=chunks.Lease(run_id=f"{job_id}:run", holder=(worker, job_id))
        )
        assert claimed.lease_expires_at > timezone.now()  # the lease has not run out

    assert use_cases.batches_reconcile().enqueued == [dead.pk]


def test_reconcile_looks_again_once_a_job_on_its_way_is_late(queue, settings):
    settings.GENERATOR_RECONCILE_GRACE_SECONDS = 30
    with dead_redis():
        batch = use_cases.batch_submit(requested_by=None, total=50)

    reconciled = use_cases.batches_reconcile()

    assert reconciled.enqueued == []
    assert 25 < reconciled.look_again_in <= 30
    quiet(batch)
    assert use_cases.batches_reconcile() == use_cases.Reconciled(
        enqueued=[batch.pk], look_again_in=None
    )
