"""The measurements: the app against the tutorial's loop, a raw insert floor, its worker's memory,
the form's latency and (on PostgreSQL) the fan-out to several workers. Each is a row of the report.

The app is driven from outside (see app.py); this process itself runs only what is not the app:
the tutorial's loop and the floor's inserts.
"""

from __future__ import annotations

import os
import statistics
import string
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection
from django.utils.crypto import get_random_string

from generator import conf
from generator.models import Batch, User

from . import BenchmarkError
from .app import App
from .floor import FLOOR_TABLE, insert_floor
from .report import Measurement, megabytes, percentile
from .scratch import Log

# Often enough to see a batch end within a few ms; rarely enough that the polling does not
# compete with the worker for the CPUs.
POLL_SECONDS = 0.01

TARGET_SPEEDUP = 500.0
TARGET_FLOOR_RATIO = 0.5
TARGET_MEMORY_MB = 200.0
# "Flat in N": the biggest batch may cost at most this much more memory than the smallest.
TARGET_MEMORY_GROWTH = 1.25
TARGET_P99_MS = 50.0
TARGET_FANOUT_SPEEDUP = 1.3


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


class Bench:
    """The measurements, sharing the app's processes and one person's browser."""

    def __init__(self, *, sizes: Sizes, app: App, log: Log) -> None:
        self.sizes = sizes
        self.app = app
        self.log = log

    def measure_all(self) -> list[Measurement]:
        """The measurements, in an order that keeps each one's conditions clean."""
        self.log("Starting the web process and logging in")
        self.app.start_web(web_limits(self.sizes))
        first = self.tutorial_vs_app()
        # Before the big batches, so the form's table is as small as a fresh install's.
        latency = self.enqueue_latency()
        # The CLI measurements need no web process: none competes with their workers.
        self.app.stop_web()
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

        self.log(f"1/5 App: form POST of {users} users over HTTP to an idle worker")
        worker = self.app.start_idle_worker(name="1-idle-worker")
        fields = self.app.generate_form(users)
        posted_at = datetime.now(UTC)
        started = time.perf_counter()
        batch_id, post_seconds = self.app.post_generate(fields)
        # Seen finished as the batch page sees it: in the status the app serves.
        deadline = started + 120
        while not (status := self.app.batch_status(batch_id))["done"]:
            if time.perf_counter() > deadline or worker.poll() is not None:
                raise BenchmarkError(
                    f"Batch {batch_id} did not finish: {self.app.processes.tail(worker)}"
                )
            time.sleep(POLL_SECONDS)
        observed_seconds = time.perf_counter() - started
        self.app.processes.stop(worker)
        if status["status"] != Batch.Status.FINISHED:
            raise BenchmarkError(f"Batch {batch_id} is {status['status']}, not finished.")
        self.app.check_created(batch_id, users)
        app_seconds = (datetime.fromisoformat(status["finished_at"]) - posted_at).total_seconds()
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
        floor_seconds = insert_floor(users)
        floor_rate = users / floor_seconds
        self.log(f"2/5 App: generate_users {users:,}, then a burst worker")
        app = self.app.cli_batch(users, name="2-floor-app")
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

    # 3. The worker's memory at two batch sizes.
    def worker_memory(self) -> Measurement:
        """Peak RSS of a burst worker and its work horse, at each batch size."""
        runs = []
        for index, size in enumerate(self.sizes.memory_sizes):
            self.log(f"3/5 Memory: generate_users {size:,}, then a burst worker")
            runs.append(self.app.cli_batch(size, name=f"3-memory-{index}-{size}"))
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

    # 4. What a person waits for when they press the button.
    def enqueue_latency(self) -> Measurement:
        """Form POSTs over HTTP with no worker running: the time to record and enqueue a batch."""
        posts, users = self.sizes.posts, self.sizes.post_users
        self.log(f"4/5 Enqueue latency: {posts} form POSTs of {users} users, no worker")
        self.app.redis.reset()
        # Untimed: the first request in a web process pays for imports and URL resolving.
        batch_ids = [self.app.post_generate(self.app.generate_form(users))[0]]
        timings = []
        for _ in range(posts):
            # The page a person looks at before pressing the button: not timed.
            batch_id, seconds = self.app.post_generate(self.app.generate_form(users))
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

    # 5. A big batch on PostgreSQL, split into jobs that several workers share.
    def fanout_scaling(self) -> Measurement:
        """The same big batch with one burst worker, then with two at once."""
        users = self.sizes.fanout_users
        runs = {}
        for workers in (1, 2):
            self.log(f"5/5 Fan-out: generate_users {users:,}, {workers} burst worker(s)")
            runs[workers] = self.app.cli_batch(
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


def web_limits(sizes: Sizes) -> dict[str, str]:
    """The web process's bounds, raised so that one person may send all the benchmark's POSTs.

    The per-person limits stay checked on every POST (that cost is measured); only their bounds
    are raised.
    """
    asked_sizes = [sizes.app_users, sizes.post_users]
    asked = sizes.app_users + (sizes.posts + 1) * sizes.post_users
    limits = {
        "GENERATOR_MIN_TOTAL": min(conf.min_total(), *asked_sizes),
        "GENERATOR_MAX_TOTAL": max(conf.max_total(), *asked_sizes),
        "GENERATOR_MAX_ACTIVE_BATCHES_PER_USER": max(
            conf.max_active_batches_per_user(), sizes.posts + 2
        ),
        "GENERATOR_MAX_USERS_PER_DAY": max(conf.max_users_per_day(), asked),
    }
    return {name: str(value) for name, value in limits.items()}
