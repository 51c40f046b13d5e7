"""The throughput rows: the CLI against the engine's floors at two sizes, the rate as the table
grows, the fan-out to several workers (PostgreSQL), the worker's memory and, for information,
the cost of one chunk.

Each repetition starts from emptied app tables (scratch.app_tables_reset), so that best of
three compares like with like; only the growth series fills one table batch after batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from generator import conf

from .app import App, BatchRun
from .floor import FloorRows, floor_methods, floor_table_ddl, limit_method
from .report import Measurement, Spread, megabytes
from .scratch import Log, app_tables_reset, database_settle
from .sizes import Sizes

TARGET_BIG_RATIO = 0.7
TARGET_CLI_RATIO = 0.6
STRETCH_CLI_RATIO = 0.9
TARGET_GROWTH_RATIO = 0.8
TARGET_FANOUT_SPEEDUP = 1.5
FANOUT_WORKERS = (1, 2, 4)
TARGET_MEMORY_MB = 200.0
# "Flat in N": twice the big batch may cost at most this much more memory than the big one.
# Compared above the big size, not below it: a bounded cache (SQLite's page cache) fills as
# the first million rows go in, then stays the size it was given.
TARGET_MEMORY_GROWTH = 1.25


@dataclass
class Series:
    """Repetitions of one CLI batch size with the same idle workers, and the floors beside."""

    users: int
    runs: list[BatchRun]
    floors: dict[str, Spread]
    peak_rss_kib: int
    sampled_peak_kib: int

    @classmethod
    def of_turns(cls, users: int, turns: list[Series]) -> Series:
        """Series of one run each, taken in turn with others, as one (they measured no floor)."""
        return cls(
            users=users,
            runs=[run for turn in turns for run in turn.runs],
            floors={},
            peak_rss_kib=max(turn.peak_rss_kib for turn in turns),
            sampled_peak_kib=max(turn.sampled_peak_kib for turn in turns),
        )

    @property
    def end_to_end(self) -> Spread:
        return Spread(tuple(run.end_to_end_seconds for run in self.runs))

    @property
    def worker(self) -> Spread:
        return Spread(tuple(run.worker_seconds for run in self.runs))

    @property
    def command(self) -> Spread:
        return Spread(tuple(run.request_seconds for run in self.runs))


class Throughput:
    """The CLI rows, with one person's worker setup: the Procfile's workers, idle beforehand."""

    def __init__(self, *, sizes: Sizes, app: App, log: Log) -> None:
        self.sizes = sizes
        self.app = app
        self.log = log

    def measure_all(self) -> list[Measurement]:
        sizes = self.sizes
        small = self.series(sizes.cli_users, repeats=sizes.repeats, name="cli", floors=True)
        big = self.series(
            sizes.big_users,
            repeats=sizes.big_repeats,
            name="cli-big",
            floors=True,
            env=self.fanout_env(),
        )
        rows = [
            self.versus_floor(big, target=TARGET_BIG_RATIO, key="cli_big_vs_limit"),
            self.versus_floor(
                small, target=TARGET_CLI_RATIO, key="cli_vs_limit", stretch=STRETCH_CLI_RATIO
            ),
            self.growth(),
        ]
        # SQLite has one writer: a batch there is one job, and more workers cannot help.
        if connection.vendor == "postgresql":
            rows.append(self.fanout())
        self.log(f"Memory: generate_users {sizes.memory_users:,}, 1 idle worker")
        huge = self.series(sizes.memory_users, repeats=1, name="memory")
        rows.append(self.memory(small, big, huge))
        rows.append(self.chunk_overhead(small))
        return rows

    def reset(self) -> None:
        """Empty the app's tables and let the database settle, untimed."""
        started = time.perf_counter()
        app_tables_reset()
        database_settle()
        self.log(f"Tables emptied and settled in {time.perf_counter() - started:.1f} s")

    def fanout_env(self) -> dict[str, str]:
        """Fanned out whatever the size (--quick), as a batch above the threshold is."""
        threshold = min(conf.fanout_threshold(), self.sizes.big_users - 1)
        return {"GENERATOR_FANOUT_THRESHOLD": str(threshold)}

    def series(
        self,
        users: int,
        *,
        repeats: int,
        name: str,
        floors: bool = False,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> Series:
        """`repeats` CLI batches of `users`, each on emptied tables, with the floors (if asked)
        measured in between, each repetition beside its floors."""
        methods = floor_methods() if floors else ()
        rows = FloorRows(users) if floors else None
        timings: dict[str, list[float]] = {method: [] for method in methods}
        runs = []
        with self.app.idle_workers(workers, name=f"{name}-{users}", env=env) as started:
            for repeat in range(1, repeats + 1):
                self.reset()
                for method in methods:
                    self.log(f"Floor {repeat}/{repeats}: {method} of {users:,} rows")
                    assert rows is not None
                    timings[method].append(rows.insert(method))
                    database_settle()
                self.log(
                    f"App {repeat}/{repeats}: generate_users {users:,}, {workers} idle worker(s)"
                )
                runs.append(
                    self.app.cli_batch(
                        users, name=f"{name}-{users}-{repeat}", workers=started, env=env
                    )
                )
        return Series(
            users=users,
            runs=runs,
            floors={method: Spread(tuple(seconds)) for method, seconds in timings.items()},
            peak_rss_kib=started.peak_rss_kib,
            sampled_peak_kib=started.sampled_peak_kib,
        )

    def versus_floor(
        self, series: Series, *, target: float, key: str, stretch: float | None = None
    ) -> Measurement:
        """The CLI, end to end, against the engine's limit for the same rows."""
        users, limit = series.users, limit_method()
        limit_rate = series.floors[limit].best_rate(users)
        ratio = series.end_to_end.best_rate(users) / limit_rate
        worker_ratio = series.worker.best_rate(users) / limit_rate
        floor_lines = [
            f"floor {method}{' (the limit)' if method == limit else ''}: {spread.describe(users)}"
            for method, spread in series.floors.items()
        ]
        met = ratio >= target
        summary = [
            *floor_lines,
            f"app end to end (command started → seen done): {series.end_to_end.describe(users)}",
            f"app worker's own (started_at → finished_at): {series.worker.describe(users)}",
            f"the command until it printed the batch id: {series.command.best:.2f} s best",
            f"end to end / limit {ratio:.2f} (worker's own / limit {worker_ratio:.2f})",
        ]
        target_text = f"≥ {target} of the {limit} limit"
        if stretch is not None:
            summary.append(f"stretch ≥ {stretch}: {'yes' if ratio >= stretch else 'no'}")
            target_text += f" (stretch {stretch})"
        return Measurement(
            key=key,
            title=f"{users:,} users: CLI vs limit",
            summary=summary,
            target=target_text,
            met=met,
            figures={
                "users": users,
                "limit": limit,
                "floors": {
                    method: spread.as_json(users) for method, spread in series.floors.items()
                },
                "end_to_end": series.end_to_end.as_json(users),
                "worker": series.worker.as_json(users),
                "command_seconds": series.command.as_json(users),
                "ratio": ratio,
                "worker_ratio": worker_ratio,
                **({"stretch_met": ratio >= stretch} if stretch is not None else {}),
                "floor_table_ddl": floor_table_ddl(),
            },
        )

    def growth(self) -> Measurement:
        """Batches one after the other into the same table: the last as fast as the first.

        The series is repeated on emptied tables, and each position in it taken at its best,
        like every other figure: one batch's noise on a shared machine is as large as the effect.
        """
        users, count, repeats = (
            self.sizes.cli_users,
            self.sizes.growth_batches,
            self.sizes.growth_repeats,
        )
        series: list[list[BatchRun]] = [[] for _ in range(count)]
        with self.app.idle_workers(name=f"growth-{users}") as workers:
            for repeat in range(1, repeats + 1):
                self.reset()
                for number in range(1, count + 1):
                    self.log(
                        f"Growth {repeat}/{repeats}, batch {number}/{count}: generate_users "
                        f"{users:,} into the same table"
                    )
                    series[number - 1].append(
                        self.app.cli_batch(users, name=f"growth-{repeat}-{number}", workers=workers)
                    )
        end_to_end = [Spread(tuple(run.end_to_end_seconds for run in runs)) for runs in series]
        worker = [Spread(tuple(run.worker_seconds for run in runs)) for runs in series]
        rates = [spread.best_rate(users) for spread in end_to_end]
        worker_rates = [spread.best_rate(users) for spread in worker]
        ratio, worker_ratio = rates[-1] / rates[0], worker_rates[-1] / worker_rates[0]
        return Measurement(
            key="growth",
            title=f"{count} x {users:,} users: table growing",
            summary=[
                f"end to end, each batch's best of {repeats}: "
                + ", ".join(f"{rate:,.0f}" for rate in rates)
                + " users/s",
                "worker's own: " + ", ".join(f"{rate:,.0f}" for rate in worker_rates) + " users/s",
                f"first: {end_to_end[0].describe(users)}",
                f"last: {end_to_end[-1].describe(users)}",
                f"last/first {ratio:.2f} (worker's own {worker_ratio:.2f}); the table ends at "
                f"{users * count:,} generated users",
            ],
            target=f"last ≥ {TARGET_GROWTH_RATIO} x first",
            met=ratio >= TARGET_GROWTH_RATIO,
            figures={
                "users": users,
                "batches": count,
                "repeats": repeats,
                "end_to_end": [spread.as_json(users) for spread in end_to_end],
                "worker": [spread.as_json(users) for spread in worker],
                "end_to_end_users_per_second": rates,
                "worker_users_per_second": worker_rates,
                "ratio": ratio,
                "worker_ratio": worker_ratio,
            },
        )

    def fanout(self) -> Measurement:
        """The big batch with 1, 2 and 4 idle workers, taking turns, each round in another order
        (1, 2, 4, then 2, 4, 1, then 4, 1, 2).

        Taking turns, each worker count meets the same moments of a shared machine: measured
        one count after the other (the one-worker figure taken from the CLI series above), the
        same code came out 1.86x and 1.39x in two runs, as one count met the machine's fast
        minutes and the other its slow ones. The order turns too, so that no count is always
        first in a round, or always after the same other.
        """
        users, repeats = self.sizes.big_users, self.sizes.big_repeats
        turns: dict[int, list[Series]] = {workers: [] for workers in FANOUT_WORKERS}
        for repeat in range(1, repeats + 1):
            shift = (repeat - 1) % len(FANOUT_WORKERS)
            for workers in FANOUT_WORKERS[shift:] + FANOUT_WORKERS[:shift]:
                turns[workers].append(
                    self.series(
                        users,
                        repeats=1,
                        name=f"fanout-{workers}-{repeat}",
                        workers=workers,
                        env=self.fanout_env(),
                    )
                )
        series = {workers: Series.of_turns(users, taken) for workers, taken in turns.items()}
        rates = {w: s.end_to_end.best_rate(users) for w, s in series.items()}
        speedups = {w: rates[w] / rates[1] for w in series}
        return Measurement(
            key="fanout",
            title=f"{users:,} users: 1, 2, 4 workers",
            summary=[
                *(f"{w} worker(s): {s.end_to_end.describe(users)}" for w, s in series.items()),
                ", ".join(f"{w} vs 1: {speedups[w]:.2f}x" for w in FANOUT_WORKERS[1:])
                + f" ({conf.fanout_jobs()} jobs per batch; the database server shares the "
                "machine's CPUs)",
            ],
            target=f"2 workers ≥ {TARGET_FANOUT_SPEEDUP} x one",
            met=speedups[2] >= TARGET_FANOUT_SPEEDUP,
            figures={
                "users": users,
                "jobs_per_batch": conf.fanout_jobs(),
                "end_to_end": {str(w): s.end_to_end.as_json(users) for w, s in series.items()},
                "worker": {str(w): s.worker.as_json(users) for w, s in series.items()},
                "speedup": {str(w): speedups[w] for w in series},
            },
        )

    def memory(self, small: Series, big: Series, huge: Series) -> Measurement:
        """Peak RSS of the worker with its work horses, at three sizes; flat from big to huge."""
        peaks = {s.users: megabytes(s.peak_rss_kib) for s in (small, big, huge)}
        sampled = {s.users: megabytes(s.sampled_peak_kib) for s in (small, big, huge)}
        growth = peaks[huge.users] / peaks[big.users]
        summary = [
            f"{users:,} users: {peak:.0f} MB ({sampled[users]:.0f} MB by VmHWM)"
            for users, peak in peaks.items()
        ]
        summary.append(f"{huge.users:,} vs {big.users:,}: {growth:.2f}x")
        if connection.vendor == "sqlite":
            summary.append(
                f"(SQLite's page cache fills up to its {settings.SQLITE_CACHE_KIB // 1024} MB "
                f"as the table grows: {small.users:,} vs {big.users:,} "
                f"{peaks[big.users] / peaks[small.users]:.2f}x)"
            )
        return Measurement(
            key="worker_memory",
            title="worker peak RSS, work horses too",
            summary=summary,
            target=f"≤ {TARGET_MEMORY_MB:.0f} MB at {big.users:,}, {huge.users:,} ≤ "
            f"{TARGET_MEMORY_GROWTH}x {big.users:,}",
            met=max(peaks[big.users], peaks[huge.users]) <= TARGET_MEMORY_MB
            and growth <= TARGET_MEMORY_GROWTH,
            figures={
                "sizes": list(peaks),
                "peak_rss_mb": list(peaks.values()),
                "proc_vmhwm_mb": list(sampled.values()),
                "growth": growth,
                "max_peak_rss_mb": max(peaks.values()),
            },
        )

    def chunk_overhead(self, small: Series) -> Measurement:
        """The same batch in chunks of two sizes: what one chunk costs beyond its rows."""
        users = self.sizes.cli_users
        series = {}
        for chunk_size in self.sizes.overhead_chunk_sizes:
            if chunk_size == conf.chunk_size():
                series[chunk_size] = small
            else:
                series[chunk_size] = self.series(
                    users,
                    repeats=self.sizes.repeats,
                    name=f"chunk-{chunk_size}",
                    env={"GENERATOR_CHUNK_SIZE": str(chunk_size)},
                )
        (few_size, few), (many_size, many) = sorted(
            series.items(), key=lambda item: item[0], reverse=True
        )
        chunks = {size: -(-users // size) for size in series}
        saved = many.worker.best - few.worker.best
        per_chunk_ms = 1000 * saved / max(chunks[many_size] - chunks[few_size], 1)
        big_chunks = -(-self.sizes.big_users // conf.chunk_size())
        return Measurement(
            key="chunk_overhead",
            title=f"{users:,} users: per-chunk overhead",
            summary=[
                *(
                    f"chunks of {size:,} ({chunks[size]} of them): worker's own "
                    f"{s.worker.describe(users)}"
                    for size, s in sorted(series.items())
                ),
                f"≈ {per_chunk_ms:.1f} ms per chunk beyond its rows (worker's own, best vs "
                f"best); so {big_chunks * per_chunk_ms / 1000:.2f} s of a "
                f"{self.sizes.big_users:,} batch in chunks of {conf.chunk_size():,}",
            ],
            target=None,
            met=True,
            figures={
                "users": users,
                "chunk_sizes": sorted(series),
                "worker": {str(size): s.worker.as_json(users) for size, s in series.items()},
                "end_to_end": {
                    str(size): s.end_to_end.as_json(users) for size, s in series.items()
                },
                "per_chunk_ms": per_chunk_ms,
            },
        )
