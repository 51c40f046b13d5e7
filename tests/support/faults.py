"""Faults injected for real: processes tagged so teardown finds them all, work horses found and
stalled through Linux's /proc, a private redis-server to crash and restart, and the Procfile's
processes started as a fleet with their logs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from redis import Redis
from redis.exceptions import RedisError

from generator.models import Batch, BatchChunk, User

from . import free_port, poll, start_process, subprocess_env, wait_for

# Every process a test starts carries this variable, so teardown finds them all, even a work
# horse whose worker was killed and which now belongs to init.
TAG_VARIABLE = "GENERATOR_FAULTS_TEST_TAG"
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


# Work horses (and, for some tests, pending signals) are found through Linux's /proc.
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="work horses are found through Linux's /proc"
)


# A batch made by one run unless a test asks for more: the runs are what fault tests count.
ONE_RUN = 10**9


def fleet_fixtures(chunk_size: int, **worker_env: str) -> tuple[Any, Any]:
    """A fault-test module's `private_redis` and `fleet` fixtures.

    `private_redis`: a redis-server of the test's own, which the app in this process uses too
    (django-rq reads RQ_QUEUES per call). `fleet`: the Procfile's processes on the test database
    and that Redis, killed at the end, their logs printed. Batches are cut in `chunk_size`
    chunks and made by one run; `worker_env` (GENERATOR_… variables) goes to every process.
    """

    @pytest.fixture
    def private_redis(settings: Any, tmp_path: Path) -> Iterator[PrivateRedis]:
        if shutil.which("redis-server") is None:
            message = "redis-server is needed to restart Redis for real"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        redis = PrivateRedis(tmp_path)
        redis.start()
        settings.RQ_QUEUES = {
            name: {**queue, "URL": redis.url} for name, queue in settings.RQ_QUEUES.items()
        }
        settings.GENERATOR_CHUNK_SIZE = chunk_size
        settings.GENERATOR_FANOUT_THRESHOLD = ONE_RUN
        try:
            yield redis
        finally:
            redis.crash()

    @pytest.fixture
    def fleet(private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Fleet]:
        env = subprocess_env(
            REDIS_URL=private_redis.url,
            GENERATOR_CHUNK_SIZE=str(chunk_size),
            GENERATOR_FANOUT_THRESHOLD=str(ONE_RUN),
            **worker_env,
        )
        fleet = Fleet(tmp_path, env)
        try:
            yield fleet
        finally:
            fleet.stop_all()
            print(fleet.log_text())

    return private_redis, fleet


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


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), newest version first."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3])
    )
    return candidates[-1].parent if candidates else None


class PrivatePostgres:
    """A PostgreSQL server of the test's own (a throwaway cluster on a free port) that it may
    restart; as root, run as the postgres user, since PostgreSQL refuses to run as root."""

    def __init__(self, directory: Path) -> None:
        bin_dir = postgres_bin()
        assert bin_dir is not None, "PostgreSQL's initdb was not found"
        self.bin = bin_dir
        self.port = free_port()
        # Outside the test's folder: the postgres user must reach it (a tmp_path under /root).
        self.data = Path(tempfile.mkdtemp(prefix="generator-test-postgres-"))
        self.log = directory / f"postgres-{self.port}.log"
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/generator"
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.data, "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-o", options]
        log = ["-l", str(self.data / "server.log")]
        subprocess.run([*self.as_owner, *pg_ctl, *log, *args], check=True, capture_output=True)

    def start(self) -> None:
        initdb = [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        subprocess.run([*self.as_owner, *initdb], check=True, capture_output=True)
        self._pg_ctl("start")
        with psycopg.connect(self.url.replace("/generator", "/postgres"), autocommit=True) as db:
            db.execute("CREATE DATABASE generator")

    def restart(self) -> None:
        """As `pg_ctl restart -m fast` does: every connection is cut, the server comes back."""
        self._pg_ctl("restart", "-m", "fast")

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.url, connect_timeout=5) as db:
            return db.execute(sql, params).fetchall()

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("stop", "-m", "immediate")
        with contextlib.suppress(OSError):
            self.log.write_text((self.data / "server.log").read_text())
        shutil.rmtree(self.data, ignore_errors=True)
