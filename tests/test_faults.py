"""Faults injected for real: nothing lost, nothing doubled.

Each test runs the Procfile's processes against a private redis-server (no persistence, as a
platform's Redis restarts) and breaks something the way production does: SIGKILL, SIGTERM, a
Redis restart, a killed database backend, a locked SQLite file, a job time limit. Whatever
happens, the batch must end with exactly the users asked for, or visibly failed and resumable
to exactly that number.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import urllib.error
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from rq import Queue, Worker
from rq.job import Job

from generator import queueing, use_cases
from generator.models import Batch, BatchChunk, User

from .support import (
    JSON_SERIALIZER,
    collect_static,
    free_port,
    session_browser,
    wait_until_up,
)
from .support.faults import (
    Fleet,
    PrivateRedis,
    assert_exactly_made,
    fleet_fixtures,
    needs_proc,
    stall_until_alarm,
    stored,
    work_horse_of,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes, needs_proc]

# Enough chunks to break into mid-batch, even on a machine that makes 100k users a second.
CHUNK_SIZE = 500
TOTAL = 40_000


# Short leases, grace and intervals: these tests are about what ends exactly, not how soon
# (tests/test_recovery.py times recovery with the production values).
private_redis, fleet = fleet_fixtures(
    CHUNK_SIZE,
    GENERATOR_LEASE_SECONDS="2",
    GENERATOR_RECONCILE_GRACE_SECONDS="1",
    GENERATOR_RECONCILE_INTERVAL_SECONDS="1",
)


def rq_queue() -> Queue:
    return queueing.batch_queue()


def workers_listening(count: int) -> Callable[[], bool]:
    return lambda: len(Worker.all(connection=rq_queue().connection)) >= count


def made_some(batch: Batch, at_least: int = CHUNK_SIZE) -> Callable[[], bool]:
    def check() -> bool:
        current = stored(batch)
        assert current.status != Batch.Status.FINISHED, "the batch ended before the fault"
        return current.created_count >= at_least

    return check


def finished(batch: Batch) -> Callable[[], bool]:
    def check() -> bool:
        current = stored(batch)
        assert current.status != Batch.Status.FAILED, current.failure_reason
        return current.status == Batch.Status.FINISHED

    return check


def batch_under_way(fleet: Fleet, **env: str) -> tuple[subprocess.Popen, Batch]:
    """A worker started with `env`, and a big batch it has begun to make."""
    worker = fleet.start("worker", **env)
    batch = use_cases.batch_submit(requested_by=None, total=TOTAL)
    fleet.wait_for(made_some(batch), "the batch made its first users", 60)
    return worker, batch


def finishes_exactly(fleet: Fleet, batch: Batch, timeout: float = 120) -> None:
    fleet.wait_for(finished(batch), f"batch {batch.pk} finished", timeout)
    assert_exactly_made(batch, fleet.log_text)


def assert_the_worker_goes_on(fleet: Fleet, worker: subprocess.Popen) -> None:
    """After the fault, the same worker makes a later batch, exactly."""
    later = use_cases.batch_submit(requested_by=None, total=3_000)
    finishes_exactly(fleet, later, 60)
    assert worker.poll() is None


def test_sigterm_stops_the_worker_within_30_s_and_the_next_worker_finishes_exactly(
    fleet: Fleet,
) -> None:
    # Long leases and grace: only the stopping run's hand-over can get the batch going again.
    worker, batch = batch_under_way(
        fleet, GENERATOR_LEASE_SECONDS="600", GENERATOR_RECONCILE_GRACE_SECONDS="600"
    )
    horse = work_horse_of(worker.pid)
    assert horse is not None, fleet.log_text()

    worker.send_signal(signal.SIGTERM)
    # HerokuWorker gives the job 6 s more before it raises ShutDownImminentException in it.
    fleet.wait_for_log("raising ShutDownImminentException in", 30)
    stall_until_alarm(horse)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker was still running 30 s after SIGTERM\n{fleet.log_text()}")
    handed_over = stored(batch)
    assert handed_over.created_count < handed_over.total
    assert handed_over.jobs_enqueued == 2, fleet.log_text()
    assert not BatchChunk.objects.filter(batch=batch, lease_owner__gt="").exists()

    fleet.start("worker", GENERATOR_LEASE_SECONDS="600", GENERATOR_RECONCILE_GRACE_SECONDS="600")
    finishes_exactly(fleet, batch)
    assert stored(batch).jobs_enqueued == 2


def test_form_posted_while_redis_is_down_says_queued_and_runs_once_redis_is_back(
    fleet: Fleet, private_redis: PrivateRedis, generator_user: User
) -> None:
    port = free_port()
    collect_static(fleet.env)
    web = fleet.start("web", PORT=str(port), WEB_CONCURRENCY="1")
    base_url = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base_url}/healthz/", web)
    browser = session_browser(base_url, generator_user)

    private_redis.crash()
    try:
        url, page = browser.post_form("/generate/", {"total": "432"})
    except urllib.error.HTTPError as error:
        pytest.fail(f"the form answered {error.code} with Redis down\n{fleet.log_text()}")
    batch = Batch.objects.get()
    assert url == f"{base_url}/batches/{batch.pk}/"
    assert f"Batch #{batch.pk} requested: 432 users." in page
    assert "Queued: it will start as soon as a worker is free." in page
    assert stored(batch).status == Batch.Status.PENDING

    private_redis.start()
    fleet.start("worker")  # no cron process: the worker's own reconcile finds the batch

    def done_for_the_person() -> bool:
        return browser.get_json(f"/api/batches/{batch.pk}/")["status"] == "finished"

    fleet.wait_for(done_for_the_person, "the person's status says finished", 120)
    assert_exactly_made(batch, fleet.log_text)


@pytest.mark.parametrize("second_job", ["another_enqueue", "the_same_job_id_again"])
def test_one_batch_run_by_two_jobs_on_two_workers_at_once_is_made_exactly_once(
    fleet: Fleet, second_job: str
) -> None:
    fleet.start("worker")
    fleet.start("worker")
    fleet.wait_for(workers_listening(2), "two workers listen", 60)

    batch = use_cases.batch_submit(requested_by=None, total=TOTAL)
    queue = rq_queue()
    if second_job == "another_enqueue":
        assert use_cases.batch_enqueue(batch.pk)
        job_ids = [queueing.batch_run_job_id(batch.pk, 1), queueing.batch_run_job_id(batch.pk, 2)]
    else:
        # As a dashboard requeue does: the same job id pushed again while it may be running.
        queue.enqueue(queueing.BATCH_RUN, batch.pk, job_id=queueing.batch_run_job_id(batch.pk, 1))
        job_ids = [queueing.batch_run_job_id(batch.pk, 1)]

    finishes_exactly(fleet, batch)

    def jobs_ended() -> bool:
        return all(
            Job.fetch(job_id, connection=queue.connection, serializer=JSON_SERIALIZER).is_finished
            for job_id in job_ids
        )

    fleet.wait_for(jobs_ended, "both jobs ended", 30)
    logs = [log.read_text() for log in fleet.logs]
    # Each worker ran one of the two jobs, at the same time, on the same batch.
    assert all(re.search(rf"\(batch-{batch.pk}(-\d+)?\)", log) for log in logs), logs
    if connection.vendor == "postgresql":
        # SKIP LOCKED lets both runs fill chunks side by side; SQLite's one writer at a time
        # may let one run take every chunk while the other waits for the lock.
        assert all(f"batch {batch.pk}: chunk" in log for log in logs), logs


def pg_backends_terminate() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return cursor.fetchone()[0]


def test_postgres_backend_killed_mid_chunk_the_chunk_is_retried_and_the_worker_goes_on(
    fleet: Fleet,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("pg_terminate_backend is PostgreSQL's; SQLite has its own case")
    worker, batch = batch_under_way(fleet)

    assert pg_backends_terminate() >= 1
    fleet.wait_for_log("database unreachable, waiting for it", 60)
    finishes_exactly(fleet, batch)
    assert_the_worker_goes_on(fleet, worker)


def test_sqlite_file_locked_mid_batch_the_chunk_is_retried_and_the_worker_goes_on(
    fleet: Fleet,
) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("a file lock is SQLite's; PostgreSQL has its own case")
    worker, batch = batch_under_way(fleet)

    # Another program holding the write lock longer than the worker's busy timeout (20 s).
    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=30, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        fleet.wait_for_log("database unreachable, waiting for it", 90)
        assert stored(batch).created_count < TOTAL
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    finishes_exactly(fleet, batch)
    assert_the_worker_goes_on(fleet, worker)


def test_job_timeout_fails_the_batch_visibly_and_resume_finishes_it_exactly(
    fleet: Fleet, settings: Any, generator_user: User, generator_client: Client
) -> None:
    settings.GENERATOR_JOB_TIMEOUT = 1
    worker = fleet.start("worker", GENERATOR_JOB_TIMEOUT="1")
    batch = use_cases.batch_submit(requested_by=generator_user, total=TOTAL)
    fleet.wait_for(made_some(batch), "the batch made its first users", 60)
    horse = work_horse_of(worker.pid)
    assert horse is not None, fleet.log_text()
    stall_until_alarm(horse)

    fleet.wait_for(lambda: stored(batch).status == Batch.Status.FAILED, "the batch failed", 60)
    status = generator_client.get(reverse("generator:api_batch_detail", args=[batch.pk])).json()
    assert status["status"] == "failed"
    assert status["failure_reason"] == "The batch took longer than the job time limit allows."
    assert status["can_resume"] is True
    assert 0 < status["created"] < TOTAL
    assert User.objects.filter(batch=batch).count() == status["created"]

    settings.GENERATOR_JOB_TIMEOUT = 600
    response = generator_client.post(reverse("generator:batch_resume", args=[batch.pk]))
    assert response.status_code == 302
    finishes_exactly(fleet, batch)
