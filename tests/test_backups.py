"""Backups: real, restorable files; rotation; the command; RQ's cron process and a real worker."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import django_rq
import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from redis import Redis
from rq import Queue
from rq.cron import get_cron_job_ids

from generator import backups, conf, use_cases
from generator.models import Batch, User

from .support import start_process, stop_process, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="pg_dump backs up PostgreSQL only"
)


@pytest.fixture
def backup_dir(settings, tmp_path: Path) -> Path:
    directory = tmp_path / "backups"
    settings.GENERATOR_BACKUP_DIR = directory
    return directory


def users_make(count: int) -> None:
    User.objects.bulk_create(
        User(username=f"backup_{number}", password="!unusable") for number in range(count)
    )


def backup_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.iterdir() if backups.BACKUP_NAME.match(path.name))


def libpq_env(database: str) -> dict[str, str]:
    """The test database's connection settings, as libpq's client tools read them."""
    current = connection.settings_dict
    env = {**os.environ, "PGDATABASE": database}
    for variable, key in (("PGHOST", "HOST"), ("PGPORT", "PORT"), ("PGUSER", "USER")):
        if current[key]:
            env[variable] = str(current[key])
    if current["PASSWORD"]:
        env["PGPASSWORD"] = current["PASSWORD"]
    return env


def users_in_backup(path: Path) -> int:
    """Restore the backup where nothing else lives and count its users."""
    if connection.vendor == "sqlite":
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as restored:
            return restored.execute("SELECT count(*) FROM generator_user").fetchone()[0]
    scratch = f"{connection.settings_dict['NAME']}_restore"
    admin = psycopg.connect(
        dbname=connection.settings_dict["NAME"],
        host=connection.settings_dict["HOST"] or None,
        port=connection.settings_dict["PORT"] or None,
        user=connection.settings_dict["USER"] or None,
        password=connection.settings_dict["PASSWORD"] or None,
        autocommit=True,
    )
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')
        admin.execute(f'CREATE DATABASE "{scratch}"')
        try:
            subprocess.run(
                ["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={scratch}", str(path)],
                env=libpq_env(scratch),
                check=True,
                capture_output=True,
                timeout=120,
            )
            count = subprocess.run(
                ["psql", "--no-psqlrc", "-tAc", "SELECT count(*) FROM generator_user"],
                env=libpq_env(scratch),
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return int(count.stdout.strip())
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{scratch}"')


def test_a_backup_restores_to_a_database_holding_every_user(backup_dir):
    users_make(250)

    path = backups.backup_create(directory=backup_dir, keep=3)

    assert path.parent == backup_dir
    assert path.suffix == (".sqlite3" if connection.vendor == "sqlite" else ".dump")
    assert backups.BACKUP_NAME.match(path.name)
    assert users_in_backup(path) == User.objects.count() == 250
    # Only the finished file is left: the temporary name was renamed, not copied.
    assert [entry.name for entry in backup_dir.iterdir()] == [path.name]


def test_rotation_keeps_exactly_the_newest_backups_and_nothing_else_is_touched(backup_dir):
    backup_dir.mkdir()
    extension = "sqlite3" if connection.vendor == "sqlite" else "dump"
    older = [backup_dir / f"generator-2020010{day}T000000Z.{extension}" for day in range(1, 6)]
    unrelated = [
        backup_dir / "notes.txt",
        backup_dir / "generator-latest.sqlite3",
        backup_dir / "generator-20200101T000000Z.sqlite3.bak",
        backup_dir / ".generator-20200101T000000Z.dump.123.partial",
    ]
    for path in older + unrelated:
        path.write_text("not a real backup")

    newest = backups.backup_create(directory=backup_dir, keep=3)

    assert backup_files(backup_dir) == sorted([older[3], older[4], newest])
    assert all(path.exists() for path in unrelated)


def test_backup_now_prints_the_path_of_the_backup_it_made(backup_dir):
    users_make(3)
    out = io.StringIO()

    call_command("backup_now", stdout=out)

    printed = Path(out.getvalue().strip())
    assert backup_files(backup_dir) == [printed]
    assert users_in_backup(printed) == 3


def test_backup_now_turns_a_backup_error_into_a_clear_command_error(settings, tmp_path):
    # A file where the folder should be: the backup cannot be written.
    blocker = tmp_path / "in-the-way"
    blocker.write_text("")
    settings.GENERATOR_BACKUP_DIR = blocker / "backups"

    with pytest.raises(CommandError) as raised:
        call_command("backup_now", stdout=io.StringIO())

    assert str(raised.value).startswith(f"Could not write the backup in {blocker / 'backups'}")
    assert "Traceback" not in str(raised.value)


@on_postgresql
def test_a_missing_pg_dump_is_a_clear_backup_error(backup_dir, monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    with pytest.raises(backups.BackupError) as raised:
        backups.backup_create(directory=backup_dir, keep=3)

    assert raised.value.code == "pg_dump_missing"
    assert "pg_dump is not installed" in str(raised.value)
    assert backup_files(backup_dir) == []


@on_postgresql
def test_a_failing_pg_dump_reports_its_own_error_and_leaves_no_file(backup_dir, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "NAME", "generator_no_such_database")

    with pytest.raises(backups.BackupError) as raised:
        backups.backup_create(directory=backup_dir, keep=3)

    message = str(raised.value)
    assert raised.value.code == "pg_dump_failed"
    assert message.startswith("pg_dump failed (exit status 1): ")
    assert 'database "generator_no_such_database" does not exist' in message
    assert "Traceback" not in message
    assert list(backup_dir.iterdir()) == []


@pytest.mark.processes
def test_a_bad_backup_schedule_stops_the_cron_process_instead_of_dropping_the_job(settings):
    env = subprocess_env(GENERATOR_BACKUP_CRON="every hour")
    cron = subprocess.run(
        [sys.executable, "manage.py", "rqcron", "generator.cron"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert cron.returncode != 0
    assert "GENERATOR_BACKUP_CRON must be a cron expression, not 'every hour'" in cron.stderr


@pytest.fixture
def cron_process(queue: Queue, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """The Procfile's `cron:` process, backing up every second instead of every hour."""
    env = subprocess_env(
        # croniter's sixth field is the second.
        GENERATOR_BACKUP_CRON="* * * * * *",
        GENERATOR_BACKUP_DIR=str(tmp_path / "cron-process-backups"),
    )
    process = start_process("cron", env, tmp_path / "cron.log")
    try:
        yield process
    finally:
        stop_process(process)
        print(f"--- cron log ---\n{(tmp_path / 'cron.log').read_text()}")


@pytest.mark.processes
def test_the_cron_process_enqueues_backups_a_real_worker_makes_and_the_dashboard_lists(
    cron_process, redis_connection: Redis, queue, run_worker, backup_dir, admin_client: Client
):
    users_make(7)
    wait_for(
        lambda: get_cron_job_ids("database_backup", redis_connection),
        "the cron process enqueued a backup",
        30,
        interval=0.1,
    )

    dashboard = admin_client.get("/django-rq/")
    assert dashboard.status_code == 200
    [scheduler] = dashboard.context["cron_schedulers"]
    page = admin_client.get(
        f"/django-rq/cron-schedulers/{scheduler.connection_index}/{scheduler.name}/"
    )
    assert page.status_code == 200
    assert "database_backup" in page.content.decode()
    assert "generator.jobs.database_backup" in page.content.decode()

    cron_process.send_signal(signal.SIGTERM)
    assert cron_process.wait(timeout=30) == 0
    job_ids = get_cron_job_ids("database_backup", redis_connection)

    run_worker(conf.maintenance_queue_name())

    maintenance = django_rq.get_queue(conf.maintenance_queue_name())
    jobs = [maintenance.fetch_job(job_id) for job_id in job_ids]
    assert [job.get_status() for job in jobs] == ["finished"] * len(jobs)
    result = jobs[0].return_value()
    made = Path(result["path"])
    assert made.parent == backup_dir
    assert made in backup_files(backup_dir)
    assert result["bytes"] == made.stat().st_size > 0
    # The seven users and admin_client's staff member.
    assert users_in_backup(made) == User.objects.count() == 8


def backup_rows(path: Path, table: str) -> list[dict[str, str]]:
    """A table's rows as the backup holds them (PostgreSQL: pg_restore's COPY text, no restore)."""
    if connection.vendor == "sqlite":
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as restored:
            cursor = restored.execute(f"SELECT * FROM {table}")
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, map(str, row), strict=True)) for row in cursor]
    dump = subprocess.run(
        ["pg_restore", "--data-only", f"--table={table}", "--file=-", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.splitlines()
    header = next(line for line in dump if line.startswith(f"COPY public.{table} "))
    names = header.split("(", 1)[1].split(")", 1)[0].split(", ")
    start = dump.index(header) + 1
    end = dump.index("\\.", start)
    return [dict(zip(names, line.split("\t"), strict=True)) for line in dump[start:end]]


@pytest.mark.processes
def test_backups_taken_while_a_worker_writes_are_consistent_snapshots(
    settings, queue, backup_dir, tmp_path
):
    settings.GENERATOR_CHUNK_SIZE = 500
    batch = use_cases.batch_submit(requested_by=None, total=30_000, enforce_limits=False)
    worker = start_process("worker", subprocess_env(), tmp_path / "worker.log", ["--burst"])
    # Backups of one second share a name: move each aside to check them all.
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    taken: list[Path] = []
    try:
        wait_for(
            lambda: Batch.objects.filter(pk=batch.pk, created_count__gt=0).exists(),
            "the worker created users",
            60,
            interval=0.1,
        )
        while worker.poll() is None and len(taken) < 12:
            path = backups.backup_create(directory=backup_dir, keep=100)
            taken.append(path.rename(snapshots / f"{len(taken)}{path.suffix}"))
            time.sleep(0.1)
        assert worker.wait(timeout=120) == 0, (tmp_path / "worker.log").read_text()
    finally:
        stop_process(worker)

    seen = []
    for path in taken:
        [row] = [row for row in backup_rows(path, "generator_batch") if row["id"] == str(batch.pk)]
        users = [
            row for row in backup_rows(path, "generator_user") if row["batch_id"] == str(batch.pk)
        ]
        chunks_done = [
            int(chunk["size"])
            for chunk in backup_rows(path, "generator_batchchunk")
            if chunk["batch_id"] == str(batch.pk) and chunk["done"] in {"1", "t", "True"}
        ]
        # A chunk's users, its done flag and the batch's count commit together: a snapshot
        # taken in the middle of that write would show them disagreeing.
        assert int(row["created_count"]) == len(users) == sum(chunks_done), path
        seen.append(len(users))
    assert any(0 < count < 30_000 for count in seen), seen
