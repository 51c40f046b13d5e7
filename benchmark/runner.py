"""One run: scratch storage taken, the app's processes started on it, every measurement made,
everything stopped and dropped again, even on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import django
from django.conf import settings
from django.db import connection
from django.utils import timezone

from generator import conf

from . import BenchmarkError
from .app import App
from .ends import batch_ends
from .measurements import Bench, engine_version
from .processes import Processes
from .report import Report
from .scratch import Log, scratch_database, scratch_redis
from .sizes import Sizes


def run(*, sizes: Sizes, quick: bool, redis_db: int, logs_dir: Path, log: Log) -> Report:
    """Run every measurement on scratch storage and return the report."""
    if connection.vendor not in {"sqlite", "postgresql"}:
        raise BenchmarkError(f"The benchmark knows SQLite and PostgreSQL, not {connection.vendor}.")
    logs_dir.mkdir(parents=True, exist_ok=True)
    # A SIGTERM must still drop the scratch database and stop the processes: make it an exit.
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with scratch_redis(redis_db, log) as redis, scratch_database(log) as (db_name, db_url):
            report = Report(
                engine=connection.vendor,
                quick=quick,
                context=run_context(sizes, database=db_name, redis_db=redis_db, logs=logs_dir),
            )
            # A run's logs are its own: the password search reads every log there, and an
            # earlier run's would be searched and counted with this one's. Only once the run
            # holds its Redis DB: a second run started meanwhile stops there, not after
            # deleting a running one's logs.
            for stale in [*logs_dir.glob("*.log"), *logs_dir.glob("*.rusage")]:
                stale.unlink()
            processes = Processes(
                env=app_env(database_url=db_url, redis_url=redis.url), logs_dir=logs_dir
            )
            try:
                build(processes, log)
                with batch_ends() as ends:
                    app = App(processes=processes, redis=redis, ends=ends)
                    report.measurements = Bench(sizes=sizes, app=app, log=log).measure_all()
            finally:
                processes.stop_all()
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return report


def app_env(*, database_url: str, redis_url: str) -> dict[str, str]:
    """Environment for the app's processes: the shipped settings on the scratch storage."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "site_config.settings",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "benchmark-only-not-secret",
        # Production-like: with DEBUG on, Django keeps the SQL of every query (up to 9,000, each
        # bulk insert hundreds of KB) in the worker, which would be measured as the app's memory.
        "DJANGO_DEBUG": "false",
        # Plain HTTP on the loopback, as behind a platform's router that terminates TLS.
        "DJANGO_HTTPS": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        # The Procfile's `python` and `gunicorn` are this virtualenv's, as on a platform.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }


# The project's own Python, which the buildpack compiles with the installed packages.
BUILT_SOURCES = ("manage.py", "site_config", "generator")


def build(processes: Processes, log: Log) -> None:
    """The build steps a platform's Python buildpack runs before any process starts: the
    project's bytecode compiled and its static files collected (the pages need the manifest).

    Without the bytecode, every process start compiles the project's modules again where
    writing it is off (PYTHONDONTWRITEBYTECODE, common in containers): measured, ~35 ms of the
    ~0.55 s a `generate_users` takes.
    """
    log("Compiling bytecode and collecting static files (the platform's build steps)")
    steps = {
        "compileall": [sys.executable, "-m", "compileall", "-q", *BUILT_SOURCES],
        "collectstatic": [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
    }
    for name, command in steps.items():
        process = processes.start(command, name=name)
        if process.wait(timeout=300) != 0:
            raise BenchmarkError(f"{name} failed: {processes.tail(process)}")


def run_context(sizes: Sizes, *, database: str, redis_db: int, logs: Path) -> dict[str, Any]:
    """Where and with what the run happened (no URLs: they may hold passwords)."""
    return {
        "started_at": timezone.now().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": memory_gb(),
        "engine_version": engine_version(),
        "repeats": sizes.repeats,
        "big_repeats": sizes.big_repeats,
        "python": platform.python_version(),
        "django": django.get_version(),
        "chunk_size": conf.chunk_size(),
        "sizes": asdict(sizes),
        "code": code_version(),
        "scratch": {"database": database, "redis_db": redis_db},
        "logs": str(logs),
    }


def cpu_model() -> str:
    """The processor's name as the kernel reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gb() -> float:
    """The machine's memory in GB."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 0.0


def code_version() -> dict[str, Any]:
    """The commit measured and the files changed since, so that runs can be told apart."""

    def git(*arguments: str) -> str:
        try:
            return subprocess.run(
                ["git", *arguments],
                cwd=settings.BASE_DIR,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "changed": [line[3:] for line in git("status", "--porcelain").splitlines()],
    }
