"""Recovery in seconds, with no cron process: dead workers are noticed by their own kind.

Each test runs the Procfile's workers with the production defaults (30 s leases, 2 s grace,
30 s reconcile interval) against a private redis-server, injects a fault for real (SIGKILL, a
Redis or PostgreSQL restart) and asserts how soon the batch runs again and that it ends with
exactly its total. The cron process never runs here: the workers must not need it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.urls import reverse
from redis import Redis
from rq import Worker

from generator import conf, queueing, use_cases
from generator.models import Batch, BatchChunk

from .support import manage, wait_for
from .support.faults import (
    POLL_SECONDS,
    Fleet,
    PrivatePostgres,
    PrivateRedis,
    alive,
    assert_exactly_made,
    fleet_fixtures,
    needs_proc,
    postgres_bin,
    stored,
    work_horse_of,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes, needs_proc]

# The targets: a batch whose run died is running again this soon.
RECOVERY_SECONDS = 10
CHUNK_SIZE = 2_000
TOTAL = 200_000

needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="fan-out and server restarts are PostgreSQL's"
)


# The production timings: only the chunk size is small, to break in mid-batch.
private_redis, fleet = fleet_fixtures(CHUNK_SIZE)


def made_more_than(batch: Batch, count: int) -> Callable[[], bool]:
    return lambda: stored(batch).created_count > count


def running_again_within(
    fleet: Fleet, batch: Batch, since: float, committed: int, seconds: float = RECOVERY_SECONDS
) -> float:
    """Wait until the batch commits users past `committed`; the seconds since `since`."""
    fleet.wait_for(
        made_more_than(batch, committed),
        f"batch {batch.pk} running again within {seconds} s",
        seconds - (time.monotonic() - since),
    )
    recovered = time.monotonic() - since
    print(f"recovered in {recovered:.1f} s")
    return recovered


def finishes_exactly(fleet: Fleet, batch: Batch, timeout: float = 120) -> None:
    fleet.wait_for(lambda: stored(batch).status == Batch.Status.FINISHED, "finished", timeout)
    assert_exactly_made(batch, fleet.log_text)


def sigkill(
    worker: subprocess.Popen, *, with_work_horse: bool = True, job_required: bool = True
) -> None:
    """SIGKILL the worker (as a crashed machine or `kill -9` does), its work horse too.

    `job_required=False`: whether it runs a job at that instant is left to chance (the chaos).
    """
    horse = work_horse_of(worker.pid)
    assert horse is not None or not job_required, "the worker runs no job"
    if with_work_horse and horse is not None:
        with contextlib.suppress(ProcessLookupError):  # its job ended meanwhile
            os.kill(horse, signal.SIGKILL)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    if with_work_horse and horse is not None:
        wait_for(lambda: not alive(horse), "the work horse is gone", 10, interval=POLL_SECONDS)


def batch_under_way(fleet: Fleet, total: int = TOTAL) -> tuple[subprocess.Popen, Batch]:
    worker = fleet.start("worker")
    batch = use_cases.batch_submit(requested_by=None, total=total)
    fleet.wait_for(made_more_than(batch, 0), "the batch made its first users", 60)
    return worker, batch


@pytest.mark.parametrize("work_horse", ["killed_too", "left_running"])
def test_the_only_worker_killed_a_new_worker_has_the_batch_running_within_10_s(
    fleet: Fleet, work_horse: str
) -> None:
    worker, batch = batch_under_way(fleet)
    horse = work_horse_of(worker.pid)
    sigkill(worker, with_work_horse=work_horse == "killed_too")
    if horse is not None and work_horse == "left_running":
        # Its worker's leases are void: it stops between chunks rather than race the next run.
        fleet.wait_for(lambda: not alive(horse), "the orphaned work horse stops", 30)
    committed = stored(batch).created_count
    assert 0 < committed < TOTAL

    started = time.monotonic()
    fleet.start("worker")
    running_again_within(fleet, batch, started, committed)
    finishes_exactly(fleet, batch)


def test_a_work_horse_killed_like_the_oom_killer_its_own_worker_resumes_within_10_s(
    fleet: Fleet,
) -> None:
    worker, batch = batch_under_way(fleet)
    horse = work_horse_of(worker.pid)
    assert horse is not None, fleet.log_text()
    os.kill(horse, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: not alive(horse), "the work horse is gone", 10, interval=POLL_SECONDS)

    running_again_within(fleet, batch, killed, stored(batch).created_count)
    finishes_exactly(fleet, batch)
    assert worker.poll() is None, "the worker itself survives its work horse"
    assert len(fleet.logs) == 1, "no other worker was started"


@needs_postgresql
def test_two_workers_on_a_fanned_out_batch_one_killed_the_other_takes_its_chunks_within_10_s(
    fleet: Fleet, settings: Any
) -> None:
    settings.GENERATOR_FANOUT_THRESHOLD = 1
    settings.GENERATOR_FANOUT_JOBS = 2
    workers = [fleet.start("worker"), fleet.start("worker")]
    connection_ = Redis.from_url(settings.RQ_QUEUES["default"]["URL"])
    fleet.wait_for(lambda: len(Worker.all(connection=connection_)) == 2, "two workers", 60)
    batch = use_cases.batch_submit(requested_by=None, total=TOTAL)

    def two_runs_hold_chunks() -> bool:
        leased = BatchChunk.objects.filter(batch=batch, done=False).exclude(lease_worker="")
        return leased.values("lease_worker").distinct().count() == 2

    fleet.wait_for(two_runs_hold_chunks, "both workers hold chunks", 60)
    names = {int(w.pid): w.name for w in Worker.all(connection=connection_) if w.pid}
    victim, survivor = workers
    victim_name = names[victim.pid]
    # Frozen, so that what it holds stays put until the kill; caught between two chunks (no
    # lease), it goes on a moment and is caught again.
    for _ in range(500):
        horse = work_horse_of(victim.pid)
        assert horse is not None, fleet.log_text()
        os.kill(horse, signal.SIGSTOP)
        orphaned = list(
            BatchChunk.objects.filter(
                batch=batch, done=False, lease_worker=victim_name
            ).values_list("pk", flat=True)
        )
        if orphaned:
            break
        os.kill(horse, signal.SIGCONT)
        time.sleep(0.005)
    assert orphaned, "the worker never held a chunk"
    sigkill(victim)
    killed_at = time.monotonic()

    def taken_over() -> bool:
        return not BatchChunk.objects.filter(
            pk__in=orphaned, done=False, lease_worker=victim_name
        ).exists()

    fleet.wait_for(taken_over, f"its chunks taken over within {RECOVERY_SECONDS} s", 10)
    print(f"taken over in {time.monotonic() - killed_at:.1f} s")
    finishes_exactly(fleet, batch)
    assert survivor.poll() is None
    assert len(fleet.logs) == 2, "no other worker was started"


def test_redis_restarted_empty_with_a_batch_queued_it_runs_within_10_s_of_a_worker_starting(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    batch = use_cases.batch_submit(requested_by=None, total=TOTAL)
    private_redis.restart()
    assert Redis.from_url(private_redis.url).dbsize() == 0  # the job is gone for good

    started = time.monotonic()
    fleet.start("worker")
    running_again_within(fleet, batch, started, 0)
    finishes_exactly(fleet, batch)


def test_redis_restarted_empty_under_an_idle_worker_a_batch_it_lost_runs_within_10_s(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    fleet.start("worker")
    connection_ = Redis.from_url(private_redis.url)
    fleet.wait_for(lambda: len(Worker.all(connection=connection_)) == 1, "a worker listens", 60)
    private_redis.crash()
    # Asked for while Redis is down: recorded, its job never reaches any queue.
    batch = use_cases.batch_submit(requested_by=None, total=TOTAL)
    assert stored(batch).status == Batch.Status.PENDING

    private_redis.start()
    back = time.monotonic()
    running_again_within(fleet, batch, back, 0)
    finishes_exactly(fleet, batch)


def test_a_worker_started_while_redis_is_down_waits_for_it_instead_of_quitting(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    private_redis.crash()
    worker = fleet.start("worker")
    fleet.wait_for_log("Redis unreachable, trying again", 30)
    assert worker.poll() is None, "RQ's own worker quits here"

    private_redis.start()
    batch = use_cases.batch_submit(requested_by=None, total=10_000)
    finishes_exactly(fleet, batch, 30)
    assert worker.poll() is None


def test_redis_restarted_empty_while_a_batch_runs_it_runs_on_within_10_s(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    worker, batch = batch_under_way(fleet, total=2 * TOTAL)
    # An idle worker too: its reconcile after the restart meets what the run leaves in Redis.
    idle = fleet.start("maintenance")
    private_redis.restart()
    back = time.monotonic()
    running_again_within(fleet, batch, back, stored(batch).created_count)
    finishes_exactly(fleet, batch)
    assert worker.poll() is None
    assert idle.poll() is None


def test_a_run_stopped_from_the_dashboard_stops_its_batch_until_it_is_resumed(
    fleet: Fleet, dashboard_client: Client
) -> None:
    worker, batch = batch_under_way(fleet)
    running = stored(batch)
    queue_index = list(settings.RQ_QUEUES).index(conf.queue_name())

    # The dashboard's Stop button, pressed by a member of staff with its permission.
    stop = reverse("django_rq:stop_job", args=[queue_index, running.last_job_id])
    response = dashboard_client.post(stop, follow=True)
    assert f"You have successfully stopped {running.last_job_id}" in response.content.decode()
    fleet.wait_for(
        lambda: stored(batch).status == Batch.Status.FAILED, "the batch stopped with its job", 10
    )
    stopped = stored(batch)
    assert stopped.failure_reason == "A job of the batch was stopped from the queue dashboard."
    assert 0 < stopped.created_count < TOTAL
    # Stopped before the worker's reconcile after the job could take it for abandoned: no run
    # was queued again.
    assert stopped.jobs_enqueued == running.jobs_enqueued
    assert queueing.batch_queue().count == 0
    assert worker.poll() is None

    use_cases.batch_resume(batch_id=batch.pk)
    finishes_exactly(fleet, batch)


def test_maintenance_jobs_run_at_once_while_a_long_batch_keeps_the_batch_worker_busy(
    fleet: Fleet,
) -> None:
    _, batch = batch_under_way(fleet, total=3 * TOTAL)
    fleet.start("maintenance")

    # As the cron process enqueues it.
    job = queueing.maintenance_queue().enqueue("generator.jobs.batches_reconcile")
    fleet.wait_for(lambda: job.get_status(refresh=True) == "finished", "the reconcile ran", 30)
    finishes_exactly(fleet, batch)
    job.refresh()
    assert job.ended_at is not None
    assert job.ended_at < stored(batch).finished_at, "it waited for the batch"
    assert job.worker_name not in {w.name for w in Worker.all(queue=queueing.batch_queue())}


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    if postgres_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL's server programs are needed to restart it for real")
        pytest.skip("PostgreSQL's server programs are needed to restart it for real")
    server = PrivatePostgres(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@needs_postgresql
def test_postgresql_restarted_mid_batch_the_batch_pauses_and_goes_on_by_itself(
    fleet: Fleet, private_postgres: PrivatePostgres
) -> None:
    # Its own server, since the restart cuts every connection to it: the test's own included.
    on_private = {
        "DATABASE_URL": private_postgres.url,
        "REDIS_URL": fleet.env["REDIS_URL"],
        "GENERATOR_CHUNK_SIZE": str(CHUNK_SIZE),
        "DJANGO_SECRET_KEY": "tests-only-not-secret",
    }
    migrated = manage("migrate", "--noinput", **on_private)
    assert migrated.returncode == 0, migrated.stderr
    fleet.start("worker", **on_private)
    asked = manage("generate_users", str(2 * TOTAL), **on_private)
    assert asked.returncode == 0, asked.stderr
    batch_id = int(re.findall(r"\d+", asked.stdout)[0])

    def batch_field(name: str) -> Any:
        rows = private_postgres.query(f"SELECT {name} FROM generator_batch WHERE id = %s", batch_id)
        return rows[0][0]

    def created() -> int:
        return batch_field("created_count")

    fleet.wait_for(lambda: created() > 0, "the batch made its first users", 60)
    private_postgres.restart()
    back = time.monotonic()
    committed = created()
    fleet.wait_for(lambda: created() > committed, "the batch goes on", RECOVERY_SECONDS)
    print(f"going on {time.monotonic() - back:.1f} s after the server was back")
    fleet.wait_for_log("database unreachable, waiting for it", 10)

    fleet.wait_for(lambda: batch_field("status") == "finished", "the batch finished", 120)
    assert created() == 2 * TOTAL
    users = private_postgres.query(
        "SELECT count(*), count(DISTINCT username) FROM generator_user WHERE batch_id = %s",
        batch_id,
    )
    assert users == [(2 * TOTAL, 2 * TOTAL)]


SOAK_TOTAL = 1_000_000
SOAK_WORKERS = 3
SOAK_SECONDS = 60


class Chaos(threading.Thread):
    """SIGKILL a random worker (its work horse too) every 2-4 s, and start a new one, until
    `seconds` have passed."""

    def __init__(
        self, fleet: Fleet, workers: list[subprocess.Popen], env: dict[str, str], seconds: float
    ) -> None:
        super().__init__(daemon=True)
        self.fleet, self.workers, self.env, self.seconds = fleet, workers, env, seconds
        self.kills = 0
        self.rng = random.Random(12)
        # An error in this thread would only end the chaos early: the test re-raises it.
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.kill_for_a_while()
        except BaseException as error:
            self.error = error

    def kill_for_a_while(self) -> None:
        until = time.monotonic() + self.seconds
        while time.monotonic() < until:
            time.sleep(self.rng.uniform(2, 4))
            victim = self.rng.choice(self.workers)
            sigkill(victim, job_required=False)
            self.kills += 1
            self.workers[self.workers.index(victim)] = self.fleet.start("worker", **self.env)


@pytest.mark.soak
@needs_postgresql
def test_chaos_soak_a_worker_killed_every_3_s_for_a_minute_each_million_users_exactly(
    fleet: Fleet, settings: Any
) -> None:
    settings.GENERATOR_FANOUT_THRESHOLD = 1
    settings.GENERATOR_FANOUT_JOBS = SOAK_WORKERS
    settings.GENERATOR_CHUNK_SIZE = 5_000
    env = {"GENERATOR_FANOUT_THRESHOLD": "1", "GENERATOR_CHUNK_SIZE": "5000"}
    workers = [fleet.start("worker", **env) for _ in range(SOAK_WORKERS)]
    connection_ = Redis.from_url(settings.RQ_QUEUES["default"]["URL"])
    fleet.wait_for(
        lambda: len(Worker.all(connection=connection_)) == SOAK_WORKERS, "the workers listen", 60
    )

    started = time.monotonic()
    calm = use_cases.batch_submit(requested_by=None, total=SOAK_TOTAL)
    finishes_exactly(fleet, calm, 300)
    fault_free = time.monotonic() - started

    # A million users at a time, one batch after another, for as long as the chaos lasts.
    chaos = Chaos(fleet, workers, env, SOAK_SECONDS)
    chaos.start()
    timings = []
    while chaos.is_alive():
        batch = use_cases.batch_submit(requested_by=None, total=SOAK_TOTAL)
        started = time.monotonic()
        finishes_exactly(fleet, batch, fault_free + 30 + 60)
        timings.append(time.monotonic() - started)
        done = collections.Counter(
            re.findall(rf"batch {batch.pk}: chunk (\d+) done", fleet.log_text())
        )
        assert max(done.values()) == 1, f"batch {batch.pk}: a chunk was written twice"
    chaos.join()
    if chaos.error is not None:
        raise chaos.error
    print(
        f"fault-free {fault_free:.1f} s; {chaos.kills} SIGKILLs in {SOAK_SECONDS} s; "
        f"batches under chaos: {', '.join(f'{seconds:.1f} s' for seconds in timings)}"
    )
    assert chaos.kills >= SOAK_SECONDS // 4
    assert max(timings) <= fault_free + 30
