"""The measurements and their targets; the first ones, on the web process, live here.

Each is a row of the report. The app is driven from outside (see app.py); this process itself
runs only what is not the app: the tutorial's loop and the floors' inserts (floor.py). The
throughput rows (the CLI against the floors, the table growing, the fan-out, the worker's
memory) are in throughput.py.
"""

from __future__ import annotations

import contextlib
import secrets
import statistics
import string
import time
import zlib
from typing import Any

from django.db import connection
from django.utils.crypto import get_random_string
from redis import Redis

from generator import conf
from generator.models import Batch, User

from . import BenchmarkError
from .app import App
from .report import Measurement, Spread, percentile
from .scratch import Log
from .sizes import Sizes
from .throughput import Throughput

TARGET_POST_SPEEDUP = 3000.0
TARGET_P99_MS = 50.0


class Bench:
    """The measurements, sharing the app's processes and one person's browser."""

    def __init__(self, *, sizes: Sizes, app: App, log: Log) -> None:
        self.sizes = sizes
        self.app = app
        self.log = log

    def measure_all(self) -> list[Measurement]:
        """The measurements, in an order that keeps each one's conditions clean; reported in
        the order of the targets."""
        self.log("Starting the web process and logging in")
        self.app.start_web(web_limits(self.sizes))
        post, password = self.tutorial_vs_post()
        # Before the big batches, so the form's table is as small as a fresh install's.
        latency = self.enqueue_latency()
        # The CLI measurements need no web process: none competes with their workers.
        self.app.stop_web()
        throughput = Throughput(sizes=self.sizes, app=self.app, log=self.log)
        rows = throughput.measure_all()
        return [post, *rows, latency, password]

    # The tutorial's loop against the app, form POST to the last row committed.
    def tutorial_vs_post(self) -> tuple[Measurement, Measurement]:
        """The tutorial's create_user loop (sampled, scaled) against a POST to its last row; and
        a batch with a password, looked for in Redis and in the worker's log afterwards."""
        sample, users, repeats = (
            self.sizes.tutorial_sample,
            self.sizes.post_users,
            self.sizes.repeats,
        )
        self.log(f"Tutorial loop: {sample} create_user call(s) with the default hasher")
        started = time.perf_counter()
        for _ in range(sample):
            username = "user_" + get_random_string(10, string.ascii_letters)
            User.objects.create_user(
                username, f"{username}@example.com", get_random_string(10, string.ascii_letters)
            )
        per_user = (time.perf_counter() - started) / sample
        tutorial_seconds = per_user * users

        self.log(f"App: {repeats} form POST(s) of {users} users over HTTP to an idle worker")
        with self.app.idle_workers(name="post") as workers:
            runs = [self.app.form_batch(users, workers=workers) for _ in range(repeats)]
            self.log("App: a form POST with a password, then Redis and the logs searched for it")
            password = secrets.token_urlsafe(18)
            fields = self.app.generate_form(self.sizes.latency_users, password=password)
            batch_id, sent, seconds = self.app.post_generate(fields)
            self.app.batch_run(
                batch_id,
                self.sizes.latency_users,
                acted=sent,
                request_seconds=seconds,
                workers=workers,
            )
            password_row = self.password_search(password, batch_id)
        end_to_end = Spread(tuple(run.end_to_end_seconds for run in runs))
        worker = Spread(tuple(run.worker_seconds for run in runs))
        post = Spread(tuple(run.request_seconds for run in runs))
        speedup = tutorial_seconds / end_to_end.best
        row = Measurement(
            key="post_vs_tutorial",
            title=f"{users:,} users: POST → last row",
            summary=[
                f"tutorial {tutorial_seconds:,.1f} s ({per_user:.3f} s/user x {users:,}, "
                f"sample of {sample})",
                f"app end to end (POST sent → seen done): {end_to_end.describe(users)}",
                f"app worker's own (started_at → finished_at): {worker.describe(users)}",
                f"the POST's answer: {post.best * 1000:.0f} ms best",
                f"app {speedup:,.0f}x faster (tutorial / best end to end)",
            ],
            target=f"≥ {TARGET_POST_SPEEDUP:,.0f}x faster",
            met=speedup >= TARGET_POST_SPEEDUP,
            figures={
                "users": users,
                "tutorial_sample": sample,
                "tutorial_seconds_per_user": per_user,
                "tutorial_seconds": tutorial_seconds,
                "end_to_end": end_to_end.as_json(users),
                "worker": worker.as_json(users),
                "post_seconds": post.as_json(users),
                "speedup": speedup,
            },
        )
        return row, password_row

    def password_search(self, password: str, batch_id: int) -> Measurement:
        """Every value in the run's Redis DB, and the worker's log, searched for the password
        and for its hash."""
        password_hash = Batch.objects.get(pk=batch_id).password_hash
        if not password_hash:
            raise BenchmarkError(f"Batch {batch_id} has no password hash: the form ignored it.")
        secrets_sought = [password.encode(), password_hash.encode()]
        keys, values = redis_values(self.app.redis.connection)
        in_redis = sum(secret in value for value in values for secret in secrets_sought)
        logs = b"".join(path.read_bytes() for path in self.app.processes.logs_dir.glob("*.log"))
        in_logs = sum(secret in logs for secret in secrets_sought)
        return Measurement(
            key="password_in_redis",
            title="no password in Redis",
            summary=[
                f"{keys} Redis keys ({len(values)} values, compressed job data unpacked) and "
                f"{len(logs):,} bytes of the processes' logs searched after the batch ran",
                f"password or its hash found {in_redis} time(s) in Redis, {in_logs} in the logs",
            ],
            target="found 0 times",
            met=in_redis == 0 and in_logs == 0,
            figures={
                "redis_keys": keys,
                "redis_values": len(values),
                "found_in_redis": in_redis,
                "found_in_logs": in_logs,
            },
        )

    # What a person waits for when they press the button.
    def enqueue_latency(self) -> Measurement:
        """Form POSTs over HTTP with no worker running: the time to record and enqueue a batch."""
        posts, users = self.sizes.posts, self.sizes.latency_users
        self.log(f"Enqueue latency: {posts} form POSTs of {users} users, no worker")
        self.app.redis.reset()
        # Untimed: the first request in a web process pays for imports and URL resolving.
        batch_ids = [self.app.post_generate(self.app.generate_form(users))[0]]
        timings = []
        for _ in range(posts):
            # The page a person looks at before pressing the button: not timed.
            batch_id, _, seconds = self.app.post_generate(self.app.generate_form(users))
            batch_ids.append(batch_id)
            timings.append(seconds)
        queued = self.app.queued_jobs()
        if queued != len(batch_ids):
            raise BenchmarkError(f"{len(batch_ids)} POSTs left {queued} jobs on the queue.")
        self.app.redis.reset()
        # Pending batches without jobs: a later worker's start-up reconcile would run them.
        Batch.objects.filter(pk__in=batch_ids).delete()
        milliseconds = sorted(t * 1000 for t in timings)
        p50, p99 = percentile(milliseconds, 50), percentile(milliseconds, 99)
        return Measurement(
            key="enqueue_latency",
            title=f"enqueue latency, {posts} form POSTs",
            summary=[
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {milliseconds[-1]:.1f} ms",
                f"({users} users each, over HTTP to gunicorn, no worker running)",
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


def redis_values(redis: Redis) -> tuple[int, list[bytes]]:
    """How many keys the DB holds, and every value in it (RQ's zlib job data unpacked too)."""
    keys, values = 0, []
    for key in redis.scan_iter(count=1000):
        keys += 1
        kind = as_bytes(redis.type(key))
        found: list[Any] = [key]
        if kind == b"string":
            found.append(redis.get(key))
        elif kind == b"hash":
            found += [item for pair in dict(redis.hgetall(key)).items() for item in pair]
        elif kind == b"list":
            found += list(redis.lrange(key, 0, -1))
        elif kind == b"set":
            found += list(redis.smembers(key))
        elif kind == b"zset":
            found += list(redis.zrange(key, 0, -1))
        elif kind == b"stream":
            entries: Any = redis.xrange(key)
            found += [item for _, entry in entries for pair in entry.items() for item in pair]
        for value in map(as_bytes, found):
            values.append(value)
            with contextlib.suppress(zlib.error):
                values.append(zlib.decompress(value))
    return keys, values


def as_bytes(value: object) -> bytes:
    """A value read from Redis (bytes, or str, int, float, None) as bytes."""
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def web_limits(sizes: Sizes) -> dict[str, str]:
    """The web process's bounds, raised so that one person may send all the benchmark's POSTs.

    The per-person limits stay checked on every POST (that cost is measured); only their bounds
    are raised.
    """
    asked_sizes = [sizes.post_users, sizes.latency_users]
    asked = sizes.repeats * sizes.post_users + (sizes.posts + 2) * sizes.latency_users
    limits = {
        "GENERATOR_MIN_TOTAL": min(conf.min_total(), *asked_sizes),
        "GENERATOR_MAX_TOTAL": max(conf.max_total(), *asked_sizes),
        "GENERATOR_MAX_ACTIVE_BATCHES_PER_USER": max(
            conf.max_active_batches_per_user(), sizes.posts + 2
        ),
        "GENERATOR_MAX_USERS_PER_DAY": max(conf.max_users_per_day(), asked),
    }
    return {name: str(value) for name, value in limits.items()}


def engine_version() -> str:
    """The database server's version, for the report's first line."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            (version,) = cursor.fetchone()
        return str(version).split()[0]
    import sqlite3

    return sqlite3.sqlite_version
