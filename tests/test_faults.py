"""Faults injected for real: nothing lost, nothing doubled.

Each test runs the Procfile's processes against a private redis-server (no persistence, as a
platform's Redis restarts) and breaks something the way production does: SIGKILL, SIGTERM, a
Redis restart, a killed database backend, a locked SQLite file, a job time limit. Whatever
happens, the batch must end with exactly the users asked for, or visibly failed and resumable
to exactly that number.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import urllib.error
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job

from generator import queueing, reconciler, use_cases
from generator.models import Batch, BatchChunk, User

from .support import (
    JSON_SERIALIZER,
    collect_static,
    free_port,
    poll,
    session_browser,
    start_process,
    subprocess_env,
    wait_for,
    wait_until_up,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.processes,
    pytest.mark.skipif(
        not Path("/proc/self/status").exists(),
        reason="work horses and pending signals are read from Linux's /proc",
    ),
]

# Every process a test starts carries this variable, so teardown finds them all, even a work
# horse whose worker was killed and which now belongs to init.
TAG_VARIABLE = "GENERATOR_FAULTS_TEST_TAG"
# Enough chunks to break into mid-batch, even on a machine that makes 100k users a second.
CHUNK_SIZE = 500
TOTAL = 40_000
ONE_RUN = 10**9


# Faults are timed against a run in full flight: look often.
POLL_SECONDS = 0.02


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) for every process on the machine."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def tagged_processes(tag: str) -> list[int]:
    found = []
    needle = f"{TAG_VARIABLE}={tag}".encode()
    for pid in process_table():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def work_horse_of(worker_pid: int) -> int | None:
    """RQ's work horse: the worker's child that put itself in a process group of its own."""
    for pid, (parent, group) in process_table().items():
        if parent == worker_pid and group == pid:
            return pid
    return None


def alarm_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [
        int(line.split()[1], 16)
        for line in status.splitlines()
        if line.startswith(("SigPnd:", "ShdPnd:"))
    ]
    return any(mask & (1 << (signal.SIGALRM - 1)) for mask in masks)


def stall_until_alarm(pid: int) -> None:
    """Stop the process (as a starved machine would) until its SIGALRM is due, then resume it.

    Both RQ's job time limit and HerokuWorker's delay after SIGTERM are alarms: a stalled run
    meets them mid-batch however fast this machine is.
    """
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: alarm_pending(pid), "its alarm is due", 30, interval=POLL_SECONDS)
    finally:
        os.kill(pid, signal.SIGCONT)


def stored(batch: Batch) -> Batch:
    return Batch.objects.get(pk=batch.pk)


def assert_exactly_made(batch: Batch, explain: Callable[[], str] = lambda: "") -> None:
    batch.refresh_from_db()
    users = User.objects.filter(batch=batch)
    assert batch.status == Batch.Status.FINISHED, (batch.status, batch.failure_reason, explain())
    assert batch.created_count == batch.total, explain()
    assert users.count() == batch.total, explain()
    assert users.values("username").distinct().count() == batch.total
    assert not BatchChunk.objects.filter(batch=batch, done=False).exists()


class PrivateRedis:
    """A redis-server of the test's own, without persistence, that it may crash and restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                *("--logfile", str(self.directory / f"redis-{self.port}.log")),
            ],
            start_new_session=True,
        )
        client = Redis.from_url(self.url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except RedisError:
                assert self.process.poll() is None, "redis-server exited at start"
                return False

        wait_for(answers, "redis-server answers", 20)
        client.close()

    def crash(self) -> None:
        """SIGKILL: whatever it held in memory is gone, as after a platform restart."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.crash()
        self.start()


class Fleet:
    """The Procfile's processes, started for real, each with its own log file."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.tag = uuid.uuid4().hex
        self.env = {**env, TAG_VARIABLE: self.tag}
        self.logs: list[Path] = []

    def start(self, name: str, **env: str) -> subprocess.Popen:
        log = self.directory / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        return start_process(name, {**self.env, **env}, log)

    def log_text(self) -> str:
        return "\n".join(f"--- {log.name} ---\n{log.read_text()}" for log in self.logs)

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float) -> None:
        """support.wait_for, with every log of the fleet in the failure."""
        wait_for(condition, what, timeout, explain=self.log_text, interval=POLL_SECONDS)

    def wait_for_log(self, text: str, timeout: float) -> None:
        self.wait_for(lambda: text in self.log_text(), f"a log says {text!r}", timeout)

    def stop_all(self) -> None:
        for pid in tagged_processes(self.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # No failure if one lingers: the test has had its say, the teardown only tidies up.
        poll(lambda: not any(alive(pid) for pid in tagged_processes(self.tag)), 10)


@pytest.fixture
def private_redis(settings: Any, tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis the app in this process uses too (django-rq reads RQ_QUEUES per call)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is needed to restart Redis for real"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    redis = PrivateRedis(tmp_path)
    redis.start()
    settings.RQ_QUEUES = {"default": {**settings.RQ_QUEUES["default"], "URL": redis.url}}
    settings.GENERATOR_CHUNK_SIZE = CHUNK_SIZE
    # One run per batch unless a test asks for more: the runs are what the tests count.
    settings.GENERATOR_FANOUT_THRESHOLD = ONE_RUN
    try:
        yield redis
    finally:
        redis.crash()


@pytest.fixture
def fleet(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Fleet]:
    """Processes that share the test database and the private Redis, with short leases."""
    env = subprocess_env(
        REDIS_URL=private_redis.url,
        GENERATOR_CHUNK_SIZE=str(CHUNK_SIZE),
        GENERATOR_FANOUT_THRESHOLD=str(ONE_RUN),
        GENERATOR_LEASE_SECONDS="2",
        GENERATOR_RECONCILE_GRACE_SECONDS="1",
        GENERATOR_RECONCILE_INTERVAL_SECONDS="1",
    )
    fleet = Fleet(tmp_path, env)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        print(fleet.log_text())


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


def reconciler_would_take(batch: Batch) -> Callable[[], bool]:
    """The reconciler's own question: no live lease left, nothing enqueued lately."""
    return lambda: (
        reconciler.batches_without_a_live_run(quiet_since=timezone.now() - timedelta(seconds=1))
        .filter(pk=batch.pk)
        .exists()
    )


def test_worker_and_work_horse_killed_with_sigkill_a_new_worker_finishes_exactly(
    fleet: Fleet,
) -> None:
    worker, batch = batch_under_way(fleet)

    horse = work_horse_of(worker.pid)
    assert horse is not None, fleet.log_text()
    os.kill(horse, signal.SIGKILL)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_for(lambda: not alive(horse), "the work horse is gone", 10, interval=POLL_SECONDS)
    committed = stored(batch).created_count
    assert 0 < committed < TOTAL
    assert User.objects.filter(batch=batch).count() == committed

    # A dead run's chunk is free once its lease runs out; the new worker's start finds it.
    wait_for(
        reconciler_would_take(batch),
        "the reconciler would take the batch",
        30,
        interval=POLL_SECONDS,
    )
    fleet.start("worker")
    finishes_exactly(fleet, batch)
    assert stored(batch).jobs_enqueued == 2


def test_work_horse_killed_like_the_oom_killer_the_batch_still_ends_exactly(fleet: Fleet) -> None:
    worker = fleet.start("worker")
    fleet.start("cron")
    batch = use_cases.batch_submit(requested_by=None, total=TOTAL)
    fleet.wait_for(made_some(batch), "the batch made its first users", 60)

    horse = work_horse_of(worker.pid)
    assert horse is not None, fleet.log_text()
    os.kill(horse, signal.SIGKILL)
    wait_for(lambda: not alive(horse), "the work horse is gone", 10, interval=POLL_SECONDS)
    assert stored(batch).created_count < TOTAL

    finishes_exactly(fleet, batch)
    assert stored(batch).jobs_enqueued >= 2
    assert worker.poll() is None, "the worker itself survives its work horse"


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


def test_redis_restarted_while_a_batch_waits_in_the_queue_the_reconciler_saves_it(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    batch = use_cases.batch_submit(requested_by=None, total=5_000)
    assert rq_queue().job_ids == [f"batch-{batch.pk}"]

    private_redis.restart()
    assert rq_queue().job_ids == []  # the job is gone for good
    fleet.start("worker")
    fleet.start("cron")

    finishes_exactly(fleet, batch)
    assert stored(batch).jobs_enqueued >= 2


def test_redis_restarted_while_a_batch_runs_the_batch_still_ends_exactly(
    fleet: Fleet, private_redis: PrivateRedis
) -> None:
    fleet.start("worker")
    fleet.start("cron")
    batch = use_cases.batch_submit(requested_by=None, total=TOTAL)
    fleet.wait_for(made_some(batch), "the batch made its first users", 60)

    private_redis.crash()
    # Down long enough for the run to find it gone, then back empty, as after a restart.
    fleet.wait_for_log("progress not reported", 60)
    private_redis.start()

    finishes_exactly(fleet, batch)


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
    fleet.start("worker")
    fleet.start("cron")

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
    fleet.wait_for_log("database error, retrying the chunk", 60)
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
        fleet.wait_for_log("database error, retrying the chunk", 90)
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
