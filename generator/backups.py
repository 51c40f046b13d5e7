"""Database backups: one consistent file per run, named by its UTC time, the newest few kept.

Plain functions on the default database: the cron job and `manage.py backup_now` call them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import connections

# Only files named like this are backups: rotation never touches anything else.
BACKUP_NAME = re.compile(r"^generator-(?P<stamp>\d{8}T\d{6}Z)\.(?:sqlite3|dump)$")
EXTENSIONS = {"sqlite": "sqlite3", "postgresql": "dump"}
STDERR_SUMMARY_CHARS = 500


class BackupError(Exception):
    """A backup could not be made; the message says why, in words a person can act on."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def backup_create(*, directory: Path, keep: int) -> Path:
    """Write one backup of the default database into `directory`, then keep the newest `keep`."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    database = connections["default"]
    extension = EXTENSIONS.get(database.vendor)
    if extension is None:
        raise BackupError(
            f"Backups of {database.vendor} databases are not supported.", code="unsupported"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = directory / f"generator-{stamp}.{extension}"
    # A name rotation never matches, so a half-written file is never taken for a backup.
    partial = directory / f".{target.name}.{os.getpid()}.partial"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A copy of every account: readable by the app's own user only, from its first byte.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if database.vendor == "sqlite":
            _sqlite_backup(database.settings_dict, partial)
        else:
            _pg_dump(database.settings_dict, partial)
        partial.replace(target)
    except OSError as exc:
        raise BackupError(
            f"Could not write the backup in {directory}: {exc.strerror or exc}.", code="not_written"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    try:
        _backups_rotate(directory=directory, keep=keep)
    except OSError as exc:
        raise BackupError(
            f"The backup {target} was made, but older backups could not be removed: "
            f"{exc.strerror or exc}.",
            code="not_rotated",
        ) from exc
    return target


def _sqlite_backup(settings_dict: dict[str, Any], target: Path) -> None:
    name = str(settings_dict["NAME"])
    if name in {"", ":memory:"} or name.startswith("file::memory:"):
        raise BackupError("An in-memory SQLite database cannot be backed up.", code="unsupported")
    try:
        # Read-write but never create: a wrong path must fail, not back up an empty database.
        source = sqlite3.connect(f"{Path(name).resolve().as_uri()}?mode=rw", uri=True, timeout=20)
    except sqlite3.Error as exc:
        raise BackupError(
            f"Could not open the SQLite database {name}: {exc}.", code="failed"
        ) from exc
    try:
        destination = sqlite3.connect(target)
        try:
            # One step copies one snapshot, consistent while the worker goes on writing.
            source.backup(destination, pages=-1)
            # A self-contained file: no -wal/-shm files appear next to it when it is opened.
            destination.execute("PRAGMA journal_mode=DELETE")
        finally:
            destination.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite could not back up {name}: {exc}.", code="failed") from exc
    finally:
        source.close()


def _pg_dump(settings_dict: dict[str, Any], target: Path) -> None:
    env = dict(os.environ)
    # Through the environment: a password on the command line is visible to every local user.
    for variable, key in (
        ("PGHOST", "HOST"),
        ("PGPORT", "PORT"),
        ("PGUSER", "USER"),
        ("PGPASSWORD", "PASSWORD"),
        ("PGDATABASE", "NAME"),
    ):
        if settings_dict.get(key):
            env[variable] = str(settings_dict[key])
    sslmode = (settings_dict.get("OPTIONS") or {}).get("sslmode")
    if sslmode:
        env["PGSSLMODE"] = str(sslmode)
    executable = shutil.which("pg_dump", path=env.get("PATH"))
    if executable is None:
        raise BackupError(
            "pg_dump is not installed (or not on PATH): install the PostgreSQL client tools, "
            "of the server's major version or newer.",
            code="pg_dump_missing",
        )
    result = subprocess.run(
        # --no-password: a scheduled job must fail, never wait for a prompt.
        [executable, "--format=custom", "--no-password", f"--file={target}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BackupError(
            f"pg_dump failed (exit status {result.returncode}): {_summary(result.stderr)}",
            code="pg_dump_failed",
        )


def _summary(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    text = " ".join(errors or lines[-3:]) or "no message"
    if len(text) > STDERR_SUMMARY_CHARS:
        text = text[: STDERR_SUMMARY_CHARS - 1] + "…"
    return text


def _backups_rotate(*, directory: Path, keep: int) -> None:
    found = [
        (match["stamp"], path)
        for path in directory.iterdir()
        if (match := BACKUP_NAME.match(path.name)) and path.is_file()
    ]
    found.sort()
    for _, path in found[:-keep]:
        path.unlink(missing_ok=True)
