"""The shipped benchmark: the app against the tutorial's loop, a raw insert floor, its memory, and
the form's latency, measured in one run on scratch storage of its own.

Everything runs against the configured database *server* and Redis, never their data: a scratch
database (`bench_<name>` on PostgreSQL, `.local/bench.sqlite3` on SQLite) is created, migrated and
dropped, and the queue lives in a Redis DB index of its own, flushed before and after. Workers are
real `rqworker` subprocesses pointed at both through DATABASE_URL and REDIS_URL.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import string
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import django
import django_rq
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test import Client
from django.test.utils import override_settings
from django.urls import Resolver404, resolve, reverse
from django.utils import timezone
from django.utils.crypto import get_random_string
from django_rq.connection_utils import get_redis_connection
from redis import Redis
from rq import Worker

from . import conf
from .models import Batch, User

JSON_SERIALIZER = "rq.serializers.JSONSerializer"
DEFAULT_REDIS_DB = 14
LOCK_KEY = "generator:benchmark:lock"
# Long enough for the slowest full run; a run that dies without cleaning up is detected by pid.
LOCK_TTL_SECONDS = 6 * 60 * 60
POLL_SECONDS = 0.002
FLOOR_TABLE = "bench_floor"
# Runs a command as its child, reaps it with wait4 and writes "<exit code> <ru_maxrss KiB>".
# Linux counts in a child's ru_maxrss the image it was forked from, up to its exec: forked
# from this process (hundreds of MB after the floor's rows) the worker would be charged for
# it. Forked from this tiny interpreter instead, the figure is the worker's own and that of
# the work horses it waited for.
LAUNCHER = """
import os, signal, sys
path, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
# Signals go to the whole process group: the worker gets them; this one waits for it.
for number in (signal.SIGTERM, signal.SIGINT):
    signal.signal(number, signal.SIG_IGN)
_, status, usage = os.wait4(pid, 0)
with open(path, "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""

TARGET_SPEEDUP = 500.0
TARGET_FLOOR_RATIO = 0.5
TARGET_MEMORY_MB = 200.0
# "Flat in N": the biggest batch may cost at most this much more memory than the smallest.
TARGET_MEMORY_GROWTH = 1.25
TARGET_P99_MS = 50.0
TARGET_FANOUT_SPEEDUP = 1.3

Log = Callable[[str], None]


class BenchmarkError(Exception):
    """The benchmark could not measure something (not: a target was missed)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    tutorial_sample: int
    app_users: int
    floor_users: int
    memory_sizes: tuple[int, ...]
    posts: int
    fanout_users: int
    post_users: int = 50


FULL_SIZES = Sizes(
    tutorial_sample=5,
    app_users=500,
    floor_users=200_000,
    memory_sizes=(100_000, 1_000_000),
    posts=200,
    fanout_users=1_000_000,
)
# Same code paths, sizes small enough for the test suite; the targets mean nothing at this size.
QUICK_SIZES = Sizes(
    tutorial_sample=1,
    app_users=50,
    floor_users=2_000,
    memory_sizes=(2_000, 4_000),
    posts=10,
    fanout_users=4_000,
)


@dataclass
class Measurement:
    """One row of the report: what was measured, the figures, the target and whether it was met."""

    key: str
    title: str
    summary: list[str]
    target: str
    met: bool
    figures: dict[str, Any]


@dataclass
class Report:
    """Everything one run measured, with enough context to compare runs."""

    engine: str
    quick: bool
    context: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def missed(self) -> list[str]:
        return [m.key for m in self.measurements if not m.met]

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return {
            "engine": self.engine,
            "quick": self.quick,
            "targets_enforced": not self.quick,
            **self.context,
            "measurements": {
                m.key: {k: v for k, v in asdict(m).items() if k != "key"} for m in self.measurements
            },
            "missed": self.missed,
        }


@dataclass
class CliRun:
    """One batch through the CLI and a burst worker: its timings and the worker's peak memory."""

    batch_id: int
    total: int
    seconds: float
    wall_seconds: float
    peak_rss_kib: int
    proc_peak_kib: int

    @property
    def rate(self) -> float:
        return self.total / max(self.seconds, 1e-9)


def run(*, sizes: Sizes, quick: bool, redis_db: int, logs_dir: Path, log: Log) -> Report:
    """Run every measurement on scratch storage and return the report."""
    if connection.vendor not in {"sqlite", "postgresql"}:
        raise BenchmarkError(f"The benchmark knows SQLite and PostgreSQL, not {connection.vendor}.")
    logs_dir.mkdir(parents=True, exist_ok=True)
    # A SIGTERM must still drop the scratch database and stop the workers: make it an exit.
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with scratch_redis(redis_db, log) as redis, scratch_database(log) as (db_name, db_url):
            report = Report(
                engine=connection.vendor,
                quick=quick,
                context=run_context(sizes, database=db_name, redis_db=redis_db, logs=logs_dir),
            )
            bench = Bench(
                sizes=sizes,
                redis=redis,
                env=worker_env(database_url=db_url, redis_url=redis.url),
                logs_dir=logs_dir,
                log=log,
            )
            with bench.app_settings():
                try:
                    report.measurements = bench.measure_all()
                finally:
                    bench.stop_processes()
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return report


def run_context(sizes: Sizes, *, database: str, redis_db: int, logs: Path) -> dict[str, Any]:
    """Where and with what the run happened (no URLs: they may hold passwords)."""
    return {
        "started_at": timezone.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "chunk_size": conf.chunk_size(),
        "sizes": asdict(sizes),
        "scratch": {"database": database, "redis_db": redis_db},
        "logs": str(logs),
    }


# Scratch storage ---------------------------------------------------------------------------


def scratch_database_name() -> str:
    """The run's own database: a file next to the project (SQLite) or bench_<name>."""
    if connection.vendor == "sqlite":
        return str(Path(settings.BASE_DIR) / ".local" / "bench.sqlite3")
    return f"bench_{connection.settings_dict['NAME']}"[:63]  # PostgreSQL's identifier limit


@contextmanager
def scratch_database(log: Log) -> Iterator[tuple[str, str]]:
    """Create and migrate the run's own database, switch to it, and drop it at the end.

    Yields its name and the DATABASE_URL that points a subprocess at it.
    """
    settings_dict = connection.settings_dict
    old_name, old_test = settings_dict["NAME"], settings_dict.get("TEST", {})
    name = scratch_database_name()
    if name == old_name:
        raise BenchmarkError(f"The scratch database would be the configured one ({name}).")
    url = subprocess_database_url(name)
    sqlite_files = [Path(name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    if connection.vendor == "sqlite":
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        # A stale WAL next to a new file would be replayed into it.
        for path in sqlite_files:
            path.unlink(missing_ok=True)
    settings_dict["TEST"] = {**old_test, "NAME": name}
    log(f"Creating and migrating the scratch database {name}")
    try:
        connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
        yield name, url
    finally:
        if settings_dict["NAME"] == name:
            log(f"Dropping the scratch database {name}")
            connection.creation.destroy_test_db(old_name, verbosity=0)
        settings_dict["TEST"] = old_test
        for path in sqlite_files if connection.vendor == "sqlite" else []:
            path.unlink(missing_ok=True)


def subprocess_database_url(name: str) -> str:
    """A DATABASE_URL for the scratch database, keeping the configured server and options."""
    if connection.vendor == "sqlite":
        return f"sqlite:///{name}"
    configured = os.environ.get("DATABASE_URL", "")
    if configured:
        return urlunsplit(urlsplit(configured)._replace(path="/" + quote(name)))
    params = connection.settings_dict
    user, password = quote(params["USER"] or "", safe=""), quote(params["PASSWORD"] or "", safe="")
    host, port = params["HOST"] or "localhost", params["PORT"] or 5432
    return f"postgres://{user}:{password}@{host}:{port}/{quote(name)}"


def bench_redis_url(url: str, db: int) -> str:
    """The configured Redis URL with its DB index replaced."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "db"]
    if parts.scheme == "unix":
        return urlunsplit(parts._replace(query=urlencode([*query, ("db", str(db))])))
    return urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))


def redis_db_of(url: str) -> int:
    """The DB index a Redis URL selects."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "db" in query:
        return int(query["db"])
    path = parts.path.strip("/")
    return int(path) if parts.scheme != "unix" and path.isdigit() else 0


@dataclass
class ScratchRedis:
    """The run's Redis DB index, held under a lock so two runs never share it."""

    url: str
    db: int
    connection: Redis
    owner: str

    def reset(self) -> None:
        """Empty the index (it is ours alone), keeping the run's lock."""
        self.connection.flushdb()
        self.connection.set(LOCK_KEY, self.owner, ex=LOCK_TTL_SECONDS)


@contextmanager
def scratch_redis(db: int, log: Log) -> Iterator[ScratchRedis]:
    """Take a Redis DB index for this run, flush it, and flush it again at the end."""
    queue_config = settings.RQ_QUEUES[conf.queue_name()]
    if "URL" not in queue_config:
        raise BenchmarkError("The benchmark needs the queue configured with a URL (REDIS_URL).")
    configured = queue_config["URL"]
    if redis_db_of(configured) == db:
        raise BenchmarkError(f"The app's own queue is in Redis DB {db}: choose another --redis-db.")
    url = bench_redis_url(configured, db)
    scratch = ScratchRedis(
        url=url,
        db=db,
        connection=get_redis_connection({**queue_config, "URL": url}),
        owner=f"{socket.gethostname()}:{os.getpid()}",
    )
    _redis_claim(scratch)
    log(f"Using Redis DB {db} (flushed before and after)")
    scratch.reset()
    try:
        yield scratch
    finally:
        scratch.connection.flushdb()


def _redis_claim(scratch: ScratchRedis) -> None:
    """Refuse a DB index that holds someone's data or another live benchmark run."""
    redis, db = scratch.connection, scratch.db
    for key in redis.scan_iter(count=1000):
        name = key.decode(errors="replace")
        if not name.startswith("rq:") and name != LOCK_KEY:
            raise BenchmarkError(
                f"Redis DB {db} holds data that is not the benchmark's (key {name!r}): "
                "not flushing it. Choose another --redis-db."
            )
    if redis.set(LOCK_KEY, scratch.owner, nx=True, ex=LOCK_TTL_SECONDS):
        return
    holder = (redis.get(LOCK_KEY) or b"").decode()
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
        return  # left by a run that died without cleaning up
    raise BenchmarkError(f"Another benchmark ({holder}) is using Redis DB {db}.")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_env(*, database_url: str, redis_url: str) -> dict[str, str]:
    """Environment for the CLI and worker subprocesses: the scratch database and Redis index."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "benchmark-only-not-secret",
        # Production-like: with DEBUG on, Django keeps the SQL of every query (up to 9,000, each
        # bulk insert hundreds of KB) in the worker, which would be measured as the app's memory.
        "DJANGO_DEBUG": "false",
        "PYTHONUNBUFFERED": "1",
    }


# Measurements ------------------------------------------------------------------------------


class Bench:
    """The measurements, sharing the scratch storage, the subprocesses and a logged-in client."""

    def __init__(
        self,
        *,
        sizes: Sizes,
        redis: ScratchRedis,
        env: dict[str, str],
        logs_dir: Path,
        log: Log,
    ) -> None:
        self.sizes = sizes
        self.redis = redis
        self.env = env
        self.logs_dir = logs_dir
        self.log = log
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_paths: dict[int, Path] = {}
        self.rusage_paths: dict[int, Path] = {}
        self._client: Client | None = None

    @contextmanager
    def app_settings(self) -> Iterator[None]:
        """In this process: the app's queue on the scratch Redis, and room for the bench's sizes."""
        queues = {
            name: {**{k: v for k, v in config.items() if k != "DB"}, "URL": self.redis.url}
            for name, config in settings.RQ_QUEUES.items()
        }
        sizes = [self.sizes.app_users, self.sizes.post_users]
        asked = self.sizes.app_users + (self.sizes.posts + 1) * self.sizes.post_users
        # The per-person limits stay checked on every POST (that cost is measured); only their
        # bounds are raised, so that one person may send all the benchmark's requests.
        with override_settings(
            RQ_QUEUES=queues,
            ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"],
            GENERATOR_MIN_TOTAL=min(conf.min_total(), *sizes),
            GENERATOR_MAX_TOTAL=max(conf.max_total(), *sizes),
            GENERATOR_MAX_ACTIVE_BATCHES_PER_USER=max(
                getattr(settings, "GENERATOR_MAX_ACTIVE_BATCHES_PER_USER", 0),
                self.sizes.posts + 2,
            ),
            GENERATOR_MAX_USERS_PER_DAY=max(
                getattr(settings, "GENERATOR_MAX_USERS_PER_DAY", 0), asked
            ),
        ):
            yield

    def measure_all(self) -> list[Measurement]:
        """The four measurements, in an order that keeps each one's conditions clean."""
        first = self.tutorial_vs_app()
        # Before the big batches, so the form's table is as small as a fresh install's.
        latency = self.enqueue_latency()
        floor = self.floor_vs_app()
        memory = self.worker_memory()
        measurements = [first, floor, memory, latency]
        # SQLite has one writer: a batch there is one job, and more workers cannot help.
        if connection.vendor == "postgresql":
            measurements.append(self.fanout_scaling())
        return measurements

    # 1. The tutorial's loop against the app, form POST to finished batch.
    def tutorial_vs_app(self) -> Measurement:
        """The tutorial's create_user loop (sampled, scaled) against a POST to a finished batch."""
        sample, users = self.sizes.tutorial_sample, self.sizes.app_users
        self.log(f"1/5 Tutorial loop: {sample} create_user call(s) with the default hasher")
        started = time.perf_counter()
        for _ in range(sample):
            username = "user_" + get_random_string(10, string.ascii_letters)
            User.objects.create_user(
                username, f"{username}@example.com", get_random_string(10, string.ascii_letters)
            )
        per_user = (time.perf_counter() - started) / sample
        tutorial_seconds = per_user * users

        self.log(f"1/5 App: form POST of {users} users to an idle worker")
        self.redis.reset()
        worker = self.start_worker(burst=False, name="1-idle-worker")
        self.wait_for_idle_worker(worker)
        client = self.client()
        posted_at = datetime.now(UTC)
        started = time.perf_counter()
        response = post_form(client, users)
        post_seconds = time.perf_counter() - started
        batch_id = batch_id_from(response)
        deadline = started + 120
        while True:
            status, finished_at = Batch.objects.values_list("status", "finished_at").get(
                pk=batch_id
            )
            if status in {Batch.Status.FINISHED, Batch.Status.FAILED}:
                break
            if time.perf_counter() > deadline or worker.poll() is not None:
                raise BenchmarkError(f"Batch {batch_id} did not finish: {self.tail(worker)}")
            time.sleep(POLL_SECONDS)
        observed_seconds = time.perf_counter() - started
        self.stop_process(worker)
        if status != Batch.Status.FINISHED:
            raise BenchmarkError(f"Batch {batch_id} failed: {self.tail(worker)}")
        self.check_created(batch_id, users)
        app_seconds = (finished_at - posted_at).total_seconds()
        speedup = tutorial_seconds / app_seconds
        return Measurement(
            key="tutorial_vs_app",
            title=f"{users:,} users: tutorial loop vs app",
            summary=[
                f"tutorial {tutorial_seconds:,.1f} s ({per_user:.3f} s/user x {users:,}, "
                f"sample of {sample})",
                f"app {app_seconds:.3f} s (POST start to finished_at; the POST "
                f"{post_seconds * 1000:.0f} ms, seen finished at {observed_seconds:.3f} s)",
                f"app {speedup:,.0f}x faster",
            ],
            target=f"≥ {TARGET_SPEEDUP:,.0f}x faster",
            met=speedup >= TARGET_SPEEDUP,
            figures={
                "users": users,
                "tutorial_sample": sample,
                "tutorial_seconds_per_user": per_user,
                "tutorial_seconds": tutorial_seconds,
                "app_seconds": app_seconds,
                "app_post_seconds": post_seconds,
                "app_observed_seconds": observed_seconds,
                "speedup": speedup,
            },
        )

    # 2. The CLI path against the cheapest way to write the same rows.
    def floor_vs_app(self) -> Measurement:
        """A raw executemany of N user rows against the CLI and a burst worker doing N users."""
        users = self.sizes.floor_users
        self.log(f"2/5 Insert floor: executemany of {users:,} rows into {FLOOR_TABLE}")
        floor_seconds = self.insert_floor(users)
        floor_rate = users / floor_seconds
        self.log(f"2/5 App: generate_users {users:,}, then a burst worker")
        app = self.cli_batch(users, name="2-floor-app")
        ratio = app.rate / floor_rate
        return Measurement(
            key="floor_vs_app",
            title=f"{users:,} users: app vs insert floor",
            summary=[
                f"floor {floor_rate:,.0f} users/s ({floor_seconds:.2f} s)",
                f"app {app.rate:,.0f} users/s (started to finished {app.seconds:.2f} s, "
                f"end to end {app.wall_seconds:.2f} s)",
                f"app/floor {ratio:.2f}",
            ],
            target=f"app/floor ≥ {TARGET_FLOOR_RATIO}",
            met=ratio >= TARGET_FLOOR_RATIO,
            figures={
                "users": users,
                "floor_seconds": floor_seconds,
                "floor_users_per_second": floor_rate,
                "app_seconds": app.seconds,
                "app_users_per_second": app.rate,
                "app_wall_seconds": app.wall_seconds,
                "app_peak_rss_mb": megabytes(app.peak_rss_kib),
                "ratio": ratio,
            },
        )

    def insert_floor(self, users: int) -> float:
        """Seconds for one transaction of executemany into a table shaped like the user table."""
        batch = Batch.objects.create(total=users, status=Batch.Status.FINISHED)
        rng_usernames: set[str] = set()
        while len(rng_usernames) < users:
            rng_usernames.add("user_" + get_random_string(10, string.ascii_letters))
        # The same values the app writes, adapted the way Django adapts them for this backend.
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        rows = [
            (
                "!" + secrets.token_hex(20),
                None,
                False,
                username,
                "",
                "",
                f"{username}@example.com",
                False,
                True,
                now,
                batch.pk,
            )
            for username in rng_usernames
        ]
        columns = [
            "password",
            "last_login",
            "is_superuser",
            "username",
            "first_name",
            "last_name",
            "email",
            "is_staff",
            "is_active",
            "date_joined",
            "batch_id",
        ]
        qn = connection.ops.quote_name
        insert = (
            f"INSERT INTO {qn(FLOOR_TABLE)} ({', '.join(qn(c) for c in columns)}) "
            f"VALUES ({', '.join(['%s'] * len(columns))})"
        )
        with connection.cursor() as cursor:
            for statement in floor_table_ddl():
                cursor.execute(statement)
        try:
            started = time.perf_counter()
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.executemany(insert, rows)
            seconds = time.perf_counter() - started
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT COUNT(*) FROM {qn(FLOOR_TABLE)}")
                (count,) = cursor.fetchone()
            if count != users:
                raise BenchmarkError(f"The floor table holds {count} rows, not {users}.")
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE {qn(FLOOR_TABLE)}")
            batch.delete()
        return seconds

    # 3. The worker's memory at two batch sizes.
    def worker_memory(self) -> Measurement:
        """Peak RSS of a burst worker and its work horse, at each batch size."""
        runs = []
        for index, size in enumerate(self.sizes.memory_sizes):
            self.log(f"3/5 Memory: generate_users {size:,}, then a burst worker")
            runs.append(self.cli_batch(size, name=f"3-memory-{index}-{size}"))
        peaks = [megabytes(run.peak_rss_kib) for run in runs]
        proc_peaks = [megabytes(run.proc_peak_kib) for run in runs]
        growth = peaks[-1] / peaks[0]
        sizes = self.sizes.memory_sizes
        return Measurement(
            key="worker_memory",
            title="worker peak RSS (with its work horse)",
            summary=[
                *(
                    f"{size:,} users: {peak:.0f} MB ({proc:.0f} MB by VmHWM; "
                    f"{run.rate:,.0f} users/s)"
                    for size, peak, proc, run in zip(sizes, peaks, proc_peaks, runs, strict=True)
                ),
                f"{sizes[-1]:,} vs {sizes[0]:,}: {growth:.2f}x",
            ],
            target=f"< {TARGET_MEMORY_MB:.0f} MB, growth ≤ {TARGET_MEMORY_GROWTH}x",
            met=max(peaks) < TARGET_MEMORY_MB and growth <= TARGET_MEMORY_GROWTH,
            figures={
                "sizes": list(sizes),
                "peak_rss_mb": peaks,
                "proc_vmhwm_mb": proc_peaks,
                "users_per_second": [run.rate for run in runs],
                "growth": growth,
                "max_peak_rss_mb": max(peaks),
            },
        )

    # 5. A big batch on PostgreSQL, split into jobs that several workers share.
    def fanout_scaling(self) -> Measurement:
        """The same big batch with one burst worker, then with two at once."""
        users = self.sizes.fanout_users
        runs = {}
        for workers in (1, 2):
            self.log(f"5/5 Fan-out: generate_users {users:,}, {workers} burst worker(s)")
            runs[workers] = self.cli_batch(
                users,
                name=f"5-fanout-{workers}",
                workers=workers,
                # Fanned out whatever the size (--quick), as a batch above the threshold is.
                env={"GENERATOR_FANOUT_THRESHOLD": str(min(conf.fanout_threshold(), users - 1))},
            )
        speedup = runs[2].rate / runs[1].rate
        return Measurement(
            key="fanout_scaling",
            title=f"{users:,} users: 1 worker vs 2 (PostgreSQL)",
            summary=[
                f"1 worker {runs[1].rate:,.0f} users/s ({runs[1].seconds:.2f} s)",
                f"2 workers {runs[2].rate:,.0f} users/s ({runs[2].seconds:.2f} s)",
                f"2 vs 1: {speedup:.2f}x on {os.cpu_count()} CPUs (database server included)",
            ],
            target=f"2 workers ≥ {TARGET_FANOUT_SPEEDUP}x",
            met=speedup >= TARGET_FANOUT_SPEEDUP,
            figures={
                "users": users,
                "jobs_per_batch": conf.fanout_jobs(),
                "one_worker_seconds": runs[1].seconds,
                "one_worker_users_per_second": runs[1].rate,
                "two_workers_seconds": runs[2].seconds,
                "two_workers_users_per_second": runs[2].rate,
                "speedup": speedup,
            },
        )

    # 4. What a person waits for when they press the button.
    def enqueue_latency(self) -> Measurement:
        """Form POSTs with no worker running: the time to record and enqueue a batch."""
        posts, users = self.sizes.posts, self.sizes.post_users
        self.log(f"4/5 Enqueue latency: {posts} form POSTs of {users} users, no worker")
        self.redis.reset()
        client = self.client()
        # One untimed request: the first one in a process pays for imports and URL resolving.
        batch_ids = [batch_id_from(post_form(client, users))]
        timings = []
        for _ in range(posts):
            started = time.perf_counter()
            response = post_form(client, users)
            timings.append(time.perf_counter() - started)
            batch_ids.append(batch_id_from(response))
        queued = django_rq.get_queue(conf.queue_name()).count
        if queued != len(batch_ids):
            raise BenchmarkError(f"{len(batch_ids)} POSTs left {queued} jobs on the queue.")
        self.redis.reset()
        Batch.objects.filter(pk__in=batch_ids).delete()
        milliseconds = sorted(t * 1000 for t in timings)
        p50, p99 = percentile(milliseconds, 50), percentile(milliseconds, 99)
        return Measurement(
            key="enqueue_latency",
            title=f"enqueue latency, {posts} form POSTs",
            summary=[
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {milliseconds[-1]:.1f} ms",
                f"({users} users each, no worker running)",
            ],
            target=f"p99 < {TARGET_P99_MS:.0f} ms",
            met=p99 < TARGET_P99_MS,
            figures={
                "posts": posts,
                "users_per_post": users,
                "p50_ms": p50,
                "p99_ms": p99,
                "mean_ms": statistics.fmean(milliseconds),
                "max_ms": milliseconds[-1],
                "queued_jobs": queued,
            },
        )

    # Helpers ---------------------------------------------------------------------------

    def client(self) -> Client:
        """A test client logged in as someone allowed to generate users."""
        if self._client is None:
            user = User.objects.create_user("benchmark", "benchmark@example.com", password=None)
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label="generator", codename="add_batch")
            )
            self._client = Client()
            self._client.force_login(user)
        return self._client

    def cli_batch(
        self, total: int, *, name: str, workers: int = 1, env: dict[str, str] | None = None
    ) -> CliRun:
        """`generate_users N`, then burst workers until the queue is empty; checks N were made.

        The peak memory is the first worker's (with its work horses).
        """
        self.redis.reset()
        started = time.perf_counter()
        command = subprocess.run(
            [sys.executable, "manage.py", "generate_users", str(total)],
            cwd=settings.BASE_DIR,
            env={
                **self.env,
                "GENERATOR_CLI_MAX_TOTAL": str(max(total, conf.cli_max_total())),
                **(env or {}),
            },
            capture_output=True,
            timeout=120,
            check=False,
        )
        (self.logs_dir / f"{name}-generate_users.log").write_bytes(command.stdout + command.stderr)
        if command.returncode != 0 or not command.stdout.strip().isdigit():
            raise BenchmarkError(f"generate_users failed: {command.stderr.decode()[-2000:]}")
        batch_id = int(command.stdout)
        started_workers = [
            self.start_worker(burst=True, name=f"{name}-worker-{number}")
            for number in range(1, workers + 1)
        ]
        worker = started_workers[0]
        sampler = PeakSampler(worker.pid)
        sampler.start()
        try:
            exits = [
                self.wait_with_rusage(each, timeout=120 + total / 1000) for each in started_workers
            ]
        finally:
            sampler.stop()
        wall_seconds = time.perf_counter() - started
        for each, (returncode, _) in zip(started_workers, exits, strict=True):
            if returncode != 0:
                raise BenchmarkError(f"A burst worker exited with {returncode}: {self.tail(each)}")
        peak_rss_kib = exits[0][1]
        batch = Batch.objects.get(pk=batch_id)
        if batch.status != Batch.Status.FINISHED or batch.started_at is None:
            raise BenchmarkError(f"Batch {batch_id} is {batch.status}: {self.tail(worker)}")
        self.check_created(batch_id, total)
        return CliRun(
            batch_id=batch_id,
            total=total,
            seconds=(batch.finished_at - batch.started_at).total_seconds(),
            wall_seconds=wall_seconds,
            peak_rss_kib=peak_rss_kib,
            proc_peak_kib=sampler.peak_kib,
        )

    def check_created(self, batch_id: int, total: int) -> None:
        """A fast batch that made the wrong number of users is no result."""
        created = User.objects.filter(batch_id=batch_id).count()
        if created != total:
            raise BenchmarkError(f"Batch {batch_id} made {created} users, not {total}.")

    def start_worker(self, *, burst: bool, name: str) -> subprocess.Popen[bytes]:
        """A real `rqworker` subprocess on the scratch database and Redis index.

        Started through a small launcher that reaps it and writes down its peak RSS: see
        LAUNCHER for why the benchmark cannot ask the kernel about its own child.
        """
        arguments = ["rqworker", conf.queue_name(), "--serializer", JSON_SERIALIZER]
        rusage_path = self.logs_dir / f"{name}.rusage"
        rusage_path.unlink(missing_ok=True)
        log = (self.logs_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                "-c",
                LAUNCHER,
                str(rusage_path),
                sys.executable,
                "manage.py",
                *arguments,
                *(["--burst"] if burst else []),
            ],
            cwd=settings.BASE_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches only us, and we stop it and its work horse.
            start_new_session=True,
        )
        log.close()
        self.log_paths[process.pid] = Path(log.name)
        self.rusage_paths[process.pid] = rusage_path
        self.processes.append(process)
        return process

    def wait_for_idle_worker(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until the worker is registered and blocked on the queue, waiting for work."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchmarkError(f"The worker exited at start: {self.tail(process)}")
            workers = Worker.all(connection=self.redis.connection)
            if workers and all(worker.get_state() == "idle" for worker in workers):
                return
            time.sleep(0.05)
        raise BenchmarkError(f"The worker was not idle within 60 s: {self.tail(process)}")

    def wait_with_rusage(
        self, process: subprocess.Popen[bytes], *, timeout: float
    ) -> tuple[int, int]:
        """Wait for a worker; its exit code and peak RSS in KiB, work horse included."""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"The worker still runs after {timeout:.0f} s.") from None
        try:
            returncode, peak_rss_kib = self.rusage_paths[process.pid].read_text().split()
        except (OSError, ValueError):
            raise BenchmarkError(f"The worker's launcher died: {self.tail(process)}") from None
        return int(returncode), int(peak_rss_kib)

    def stop_process(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM (a warm shutdown for a worker), then SIGKILL if it does not go."""
        if process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop_processes(self) -> None:
        """Stop every subprocess this run started that is still running."""
        for process in self.processes:
            self.stop_process(process)

    def tail(self, process: subprocess.Popen[bytes]) -> str:
        """The end of a subprocess's log, for an error message."""
        path = self.log_paths[process.pid]
        return f"(log {path})\n" + path.read_text(errors="replace")[-3000:]


def post_form(client: Client, total: int) -> Any:
    """Submit the generate form as a browser does, with the fresh key the page would carry."""
    return client.post(
        reverse("generator:generate"),
        {"total": str(total), "idempotency_key": str(uuid.uuid4())},
        secure=True,
    )


def batch_id_from(response: Any) -> int:
    """The batch a successful form POST redirected to."""
    if response.status_code != 302:
        raise BenchmarkError(
            f"The form answered {response.status_code}, not a redirect: invalid, or refused "
            "by a limit?"
        )
    try:
        return int(resolve(response.url).kwargs["batch_id"])
    except (Resolver404, KeyError):
        raise BenchmarkError(f"The form redirected to {response.url}, not a batch.") from None


def floor_table_ddl() -> list[str]:
    """CREATE statements for a table with the user table's columns, constraints and indexes."""
    qn = connection.ops.quote_name
    columns = []
    for model_field in User._meta.concrete_fields:
        definition = f"{qn(model_field.column)} {model_field.db_type(connection)}"
        definition += " NULL" if model_field.null else " NOT NULL"
        if model_field.primary_key:
            definition += " PRIMARY KEY"
        elif model_field.unique:
            definition += " UNIQUE"
        if suffix := model_field.db_type_suffix(connection):
            definition += f" {suffix}"
        if model_field.remote_field is not None:
            target = model_field.target_field
            definition += (
                f" REFERENCES {qn(target.model._meta.db_table)} ({qn(target.column)})"
                f"{connection.ops.deferrable_sql()}"
            )
        columns.append(definition)
    statements = [f"CREATE TABLE {qn(FLOOR_TABLE)} ({', '.join(columns)})"]
    # The secondary indexes as the migrations made them (on PostgreSQL that includes the
    # varchar_pattern_ops index for LIKE on username), copied from the database's catalogue.
    table = User._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                "WHERE indrelid = %s::regclass AND NOT indisunique AND NOT indisprimary",
                [table],
            )
        else:
            cursor.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s "
                "AND sql IS NOT NULL",
                [table],
            )
        definitions = [row[0] for row in cursor.fetchall()]
    pattern = re.compile(r"^CREATE INDEX (\S+) ON (\S+)", re.IGNORECASE)
    for index, definition in enumerate(definitions):
        renamed, replaced = pattern.subn(
            f"CREATE INDEX {qn(f'{FLOOR_TABLE}_{index}')} ON {qn(FLOOR_TABLE)}", definition
        )
        if replaced != 1:
            raise BenchmarkError(f"Cannot copy the index {definition!r}.")
        statements.append(renamed)
    return statements


class PeakSampler(threading.Thread):
    """A second source for the peak: polls VmHWM of a process's descendants in /proc."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            for pid in descendants_of(self.pid):
                self.peak_kib = max(self.peak_kib, vm_hwm_kib(pid))
            self._stopped.wait(0.02)

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def children_of(pid: int) -> list[int]:
    """The direct children of a process, from /proc (empty when it is gone)."""
    children = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):  # the process may exit while we read
            children += [int(child) for child in path.read_text().split()]
    return children


def descendants_of(pid: int) -> list[int]:
    """The children of a process, their children, and so on."""
    found, pending = [], children_of(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending += children_of(child)
    return found


def vm_hwm_kib(pid: int) -> int:
    """A process's peak resident set size so far in KiB, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def megabytes(kib: int) -> float:
    return kib * 1024 / 1_000_000


def percentile(sorted_values: list[float], percent: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


# Output ------------------------------------------------------------------------------------


def format_table(report: Report) -> str:
    """The report as a plain-text table, with a MISSED line when a target was missed."""
    context = report.context
    lines = [
        f"Generator benchmark: {report.engine}, {context['cpus']} CPUs, Python "
        f"{context['python']}, Django {context['django']}, chunk {context['chunk_size']:,}"
        + (" (--quick: tiny sizes, targets not enforced)" if report.quick else ""),
        "",
    ]
    widths = (40, 62, 26)
    header = ("measurement", "figures", "target", "met")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + header[3])
    lines.append("  ".join("-" * w for w in widths) + "  ---")
    for number, m in enumerate(report.measurements, start=1):
        figures = [line for part in m.summary for line in textwrap.wrap(part, widths[1])]
        title = textwrap.wrap(f"{number}. {m.title}", widths[0])
        met = "yes" if m.met else "no  MISSED"
        for row in range(max(len(figures), len(title))):
            cells = (
                title[row] if row < len(title) else "",
                figures[row] if row < len(figures) else "",
                m.target if row == 0 else "",
            )
            text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            lines.append((text + (met if row == 0 else "")).rstrip())
    lines.append("")
    if report.missed:
        note = " (not enforced in --quick)" if report.quick else ""
        lines.append(f"MISSED: {', '.join(report.missed)}{note}")
    else:
        lines.append("All targets met.")
    return "\n".join(lines)


def write_json(report: Report, path: Path) -> None:
    """The same figures as the table, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
