"""The benchmark (python -m benchmark): every figure measured in --quick mode, no scratch left; how
it sees a batch end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from redis import Redis

from benchmark.ends import CHANNEL, BatchLate, NotifiedEnds, batch_ends
from benchmark.scratch import bench_redis_url
from generator.models import Batch

from .support import subprocess_env

MEASUREMENTS = {
    "post_vs_tutorial",
    "cli_big_vs_limit",
    "cli_vs_limit",
    "growth",
    "worker_memory",
    "chunk_overhead",
    "enqueue_latency",
    "password_in_redis",
}
# SQLite has one writer, so big batches fan out on PostgreSQL only.
POSTGRES_MEASUREMENTS = {*MEASUREMENTS, "fanout"}
# Figures that are counts of what must not be there, or a difference of two timings.
ZERO_FIGURES = {"found_in_redis", "found_in_logs"}
SIGNED_FIGURES = {"per_chunk_ms"}


def numbers_in(value: Any) -> list[float]:
    """Every number in a JSON value, however nested (booleans are not figures)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return []


def postgres_databases() -> set[str]:
    """The database names on the configured PostgreSQL server."""
    params = settings.DATABASES["default"]
    with psycopg.connect(
        host=params["HOST"] or "localhost",
        port=params["PORT"] or 5432,
        user=params["USER"],
        password=params["PASSWORD"],
        dbname="postgres",
    ) as db:
        return {name for (name,) in db.execute("SELECT datname FROM pg_database")}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """Run `python -m benchmark --quick` once as a real process; its JSON and its table."""
    json_path = tmp_path_factory.mktemp("benchmark") / "quick.json"
    # As an earlier run leaves it: this run must neither search nor keep that one's logs.
    earlier_logs = json_path.with_name("quick-logs")
    earlier_logs.mkdir()
    (earlier_logs / "earlier-worker.log").write_text("an earlier run's worker log\n")
    (earlier_logs / "earlier-worker.rusage").write_text("0 1024\n")
    # The benchmark makes its own scratch database on the test run's server (never the tests'
    # database itself) and takes its own Redis DB index next to the tests' one.
    env = subprocess_env(REDIS_URL=settings.TEST_REDIS_URL)
    result = subprocess.run(
        [sys.executable, "-m", "benchmark", "--quick", "--json", str(json_path)],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(json_path.read_text()), result.stdout


@pytest.mark.processes
def test_quick_benchmark_reports_every_measurement_with_figures(quick_run):
    report, table = quick_run
    assert report["quick"] is True
    assert report["targets_enforced"] is False
    logs = Path(report["logs"])
    assert not (logs / "earlier-worker.log").exists()
    assert not (logs / "earlier-worker.rusage").exists()
    on_postgres = settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3"
    assert set(report["measurements"]) == (POSTGRES_MEASUREMENTS if on_postgres else MEASUREMENTS)
    for key, measurement in report["measurements"].items():
        figures = measurement["figures"]
        measured = {
            name: value
            for name, value in figures.items()
            if name not in ZERO_FIGURES | SIGNED_FIGURES
        }
        assert numbers_in(measured), key
        assert all(number > 0 for number in numbers_in(measured)), (key, figures)
        assert all(figures[name] == 0 for name in ZERO_FIGURES & figures.keys()), (key, figures)
        assert isinstance(measurement["met"], bool)
        # Information rows have no target and are never missed.
        assert measurement["target"] or measurement["met"]
    measurements = report["measurements"]
    assert measurements["password_in_redis"]["met"] is True
    assert measurements["worker_memory"]["figures"]["sizes"] == [2000, 4000, 8000]
    growth = measurements["growth"]["figures"]
    assert growth["batches"] == 5
    # Each batch of the series is a best of the repeats, as every other figure is.
    assert [len(batch["seconds"]) for batch in growth["end_to_end"]] == [growth["repeats"]] * 5
    limit = "COPY" if on_postgres else "executemany"
    for key in ("cli_vs_limit", "cli_big_vs_limit"):
        figures = measurements[key]["figures"]
        assert figures["limit"] == limit
        assert set(figures["floors"]) == ({"executemany", "COPY"} if on_postgres else {limit})
        # End to end includes the worker's own time, and the ratio is best against best.
        end_to_end, worker = figures["end_to_end"], figures["worker"]
        assert end_to_end["min_seconds"] > worker["min_seconds"]
        assert end_to_end["min_seconds"] <= end_to_end["median_seconds"]
        assert end_to_end["median_seconds"] <= end_to_end["max_seconds"]
        best_limit = figures["floors"][limit]["best_users_per_second"]
        assert figures["ratio"] == end_to_end["best_users_per_second"] / best_limit
    assert len(measurements["cli_vs_limit"]["figures"]["end_to_end"]["seconds"]) == 2
    if on_postgres:
        assert set(measurements["fanout"]["figures"]["end_to_end"]) == {"1", "2", "4"}
    titles = [
        "POST → last row",
        "CLI vs limit",
        "table growing",
        "peak RSS",
        "enqueue latency",
        "no password in Redis",
    ]
    for title in titles + (["1, 2, 4 workers"] if on_postgres else []):
        assert title in table
    assert "not enforced" in table


@pytest.mark.processes
def test_quick_benchmark_leaves_no_scratch_storage_behind(quick_run):
    report, _ = quick_run
    scratch = report["scratch"]
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        database = Path(scratch["database"])
        assert database == Path(settings.BASE_DIR) / ".local" / "bench.sqlite3"
        assert not list(database.parent.glob("bench.sqlite3*"))
    else:
        assert scratch["database"] == f"bench_{settings.DATABASES['default']['NAME']}"
        assert scratch["database"] not in postgres_databases()
    assert scratch["redis_db"] == 14
    redis = Redis.from_url(bench_redis_url(settings.TEST_REDIS_URL, scratch["redis_db"]))
    assert redis.dbsize() == 0


@pytest.fixture
def notified_ends() -> Iterator[NotifiedEnds]:
    """The benchmark's PostgreSQL end watcher on the tests' database, its trigger dropped after."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL tells batch ends by NOTIFY; SQLite is looked at.")
    try:
        with batch_ends() as ends:
            assert isinstance(ends, NotifiedEnds)
            yield ends
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER {CHANNEL} ON {Batch._meta.db_table}")
            cursor.execute(f"DROP FUNCTION {CHANNEL}()")


@pytest.mark.django_db(transaction=True)
def test_a_batch_end_is_seen_once_its_transaction_commits_not_before(notified_ends):
    batch = Batch.objects.create(total=1, status=Batch.Status.RUNNING)
    Batch.objects.filter(pk=batch.pk).update(created_count=1)  # not an end: nothing sent

    def wait(seconds: float) -> float:
        deadline = time.monotonic() + seconds
        return notified_ends.wait(batch.pk, total=1, deadline=deadline, check=lambda: None)

    with pytest.raises(BatchLate):
        wait(0.3)
    with transaction.atomic():
        Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.FINISHED)
        with pytest.raises(BatchLate):
            wait(0.3)  # set, not committed
        committing = time.perf_counter()
    assert wait(10) >= committing
