"""The app's settings as one typed, frozen object, read from Django's settings at each call.

site_config/settings.py reads the environment once, holds every default and refuses to start on a
bad value; this module holds no default and no rule of its own, only the types. It reads Django's
settings anew on each call, so a test that overrides one (pytest-django's `settings`,
`override_settings`) sees its value at once. The functions below are what callers use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorSettings:
    """Every GENERATOR_ setting the app reads (site_config/settings.py says what each means)."""

    min_total: int
    max_total: int
    cli_max_total: int
    chunk_size: int
    job_timeout: int
    page_size: int
    queue_name: str
    maintenance_queue_name: str
    lease_seconds: int
    worker_heartbeat_seconds: int
    fanout_threshold: int
    fanout_jobs: int
    in_worker_max_total: int
    reconcile_grace_seconds: int
    reconcile_interval_seconds: int
    database_wait_seconds: int
    max_active_batches_per_user: int
    max_users_per_day: int
    backup_dir: Path
    backup_keep: int
    backup_cron: str

    @classmethod
    def from_django_settings(cls) -> GeneratorSettings:
        return cls(
            min_total=_setting("GENERATOR_MIN_TOTAL", int),
            max_total=_setting("GENERATOR_MAX_TOTAL", int),
            cli_max_total=_setting("GENERATOR_CLI_MAX_TOTAL", int),
            chunk_size=_setting("GENERATOR_CHUNK_SIZE", int),
            job_timeout=_setting("GENERATOR_JOB_TIMEOUT", int),
            page_size=_setting("GENERATOR_PAGE_SIZE", int),
            queue_name=_setting("GENERATOR_QUEUE", str),
            maintenance_queue_name=_setting("GENERATOR_MAINTENANCE_QUEUE", str),
            lease_seconds=_setting("GENERATOR_LEASE_SECONDS", int),
            worker_heartbeat_seconds=_setting("GENERATOR_WORKER_HEARTBEAT_SECONDS", int),
            fanout_threshold=_setting("GENERATOR_FANOUT_THRESHOLD", int),
            fanout_jobs=_setting("GENERATOR_FANOUT_JOBS", int),
            in_worker_max_total=_setting("GENERATOR_IN_WORKER_MAX_TOTAL", int),
            reconcile_grace_seconds=_setting("GENERATOR_RECONCILE_GRACE_SECONDS", int),
            reconcile_interval_seconds=_setting("GENERATOR_RECONCILE_INTERVAL_SECONDS", int),
            database_wait_seconds=_setting("GENERATOR_DATABASE_WAIT_SECONDS", int),
            max_active_batches_per_user=_setting("GENERATOR_MAX_ACTIVE_BATCHES_PER_USER", int),
            max_users_per_day=_setting("GENERATOR_MAX_USERS_PER_DAY", int),
            backup_dir=_path_setting("GENERATOR_BACKUP_DIR"),
            backup_keep=_setting("GENERATOR_BACKUP_KEEP", int),
            backup_cron=_setting("GENERATOR_BACKUP_CRON", str),
        )


def _value(name: str) -> object:
    try:
        return getattr(settings, name)
    except AttributeError:
        # A settings module of its own that forgot to start from ours: a bug, said in one line.
        raise ImproperlyConfigured(
            f"{name} is not set: a settings module must start from site_config.settings, "
            "which gives every GENERATOR_ setting its default."
        ) from None


def _wrong_type(name: str, expected: str, value: object) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"{name} must be {expected}, not {type(value).__name__} ({value!r})."
    )


def _setting[T](name: str, kind: type[T]) -> T:
    value = _value(name)
    # True is an int to isinstance, never a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _wrong_type(name, kind.__name__, value)
    return value


def _path_setting(name: str) -> Path:
    """A Path or a str, as Django's own path settings may be."""
    value = _value(name)
    if not isinstance(value, str | os.PathLike):
        raise _wrong_type(name, "a path", value)
    return Path(value)


def current() -> GeneratorSettings:
    """The app's settings as they are now, a test's override included."""
    return GeneratorSettings.from_django_settings()


def min_total() -> int:
    return current().min_total


def max_total() -> int:
    return current().max_total


def cli_max_total() -> int:
    return current().cli_max_total


def chunk_size() -> int:
    return current().chunk_size


def job_timeout() -> int:
    return current().job_timeout


def page_size() -> int:
    return current().page_size


def queue_name() -> str:
    return current().queue_name


def maintenance_queue_name() -> str:
    return current().maintenance_queue_name


def lease_seconds() -> int:
    return current().lease_seconds


def worker_heartbeat_seconds() -> int:
    return current().worker_heartbeat_seconds


def fanout_threshold() -> int:
    return current().fanout_threshold


def fanout_jobs() -> int:
    return current().fanout_jobs


def in_worker_max_total() -> int:
    return current().in_worker_max_total


def reconcile_grace_seconds() -> int:
    return current().reconcile_grace_seconds


def reconcile_interval_seconds() -> int:
    return current().reconcile_interval_seconds


def database_wait_seconds() -> int:
    return current().database_wait_seconds


def max_active_batches_per_user() -> int:
    return current().max_active_batches_per_user


def max_users_per_day() -> int:
    """Users one person may ask for in 24 hours through the form and the API."""
    return current().max_users_per_day


def backup_dir() -> Path:
    return current().backup_dir


def backup_keep() -> int:
    return current().backup_keep


def backup_cron() -> str:
    """When RQ's cron scheduler backs the database up (checked at start-up by the settings)."""
    return current().backup_cron
