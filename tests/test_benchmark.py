"""The benchmark (python -m benchmark) in --quick mode: every figure measured, no scratch left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from redis import Redis

from benchmark.scratch import bench_redis_url

from .support import subprocess_env

pytestmark = pytest.mark.processes

MEASUREMENTS = {"tutorial_vs_app", "floor_vs_app", "worker_memory", "enqueue_latency"}
# SQLite has one writer, so big batches fan out on PostgreSQL only.
POSTGRES_MEASUREMENTS = {*MEASUREMENTS, "fanout_scaling"}


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


def test_quick_benchmark_reports_every_measurement_with_figures(quick_run):
    report, table = quick_run
    assert report["quick"] is True
    assert report["targets_enforced"] is False
    on_postgres = settings.DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3"
    assert set(report["measurements"]) == (POSTGRES_MEASUREMENTS if on_postgres else MEASUREMENTS)
    for key, measurement in report["measurements"].items():
        figures = numbers_in(measurement["figures"])
        assert figures, key
        assert all(number > 0 for number in figures), (key, measurement["figures"])
        assert isinstance(measurement["met"], bool)
        assert measurement["target"]
    assert report["measurements"]["worker_memory"]["figures"]["sizes"] == [2000, 4000]
    titles = ["tutorial loop vs app", "app vs insert floor", "peak RSS", "enqueue latency"]
    for title in titles + (["1 worker vs 2"] if on_postgres else []):
        assert title in table
    assert "not enforced" in table


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
