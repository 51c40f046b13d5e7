"""The one place the app reads its settings, lazily, so tests can override them."""

from pathlib import Path

from croniter import croniter
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def min_total() -> int:
    return getattr(settings, "GENERATOR_MIN_TOTAL", 50)


def max_total() -> int:
    return getattr(settings, "GENERATOR_MAX_TOTAL", 500)


def cli_max_total() -> int:
    return getattr(settings, "GENERATOR_CLI_MAX_TOTAL", 10_000_000)


def chunk_size() -> int:
    return getattr(settings, "GENERATOR_CHUNK_SIZE", 5_000)


def job_timeout() -> int:
    return getattr(settings, "GENERATOR_JOB_TIMEOUT", 6 * 60 * 60)


def page_size() -> int:
    return getattr(settings, "GENERATOR_PAGE_SIZE", 50)


def queue_name() -> str:
    return getattr(settings, "GENERATOR_QUEUE", "default")


def lease_seconds() -> int:
    return getattr(settings, "GENERATOR_LEASE_SECONDS", 30)


def fanout_threshold() -> int:
    return getattr(settings, "GENERATOR_FANOUT_THRESHOLD", 100_000)


def fanout_jobs() -> int:
    return getattr(settings, "GENERATOR_FANOUT_JOBS", 4)


def reconcile_grace_seconds() -> int:
    return getattr(settings, "GENERATOR_RECONCILE_GRACE_SECONDS", 30)


def reconcile_interval_seconds() -> int:
    return getattr(settings, "GENERATOR_RECONCILE_INTERVAL_SECONDS", 30)


def max_active_batches_per_user() -> int:
    return getattr(settings, "GENERATOR_MAX_ACTIVE_BATCHES_PER_USER", 5)


def max_users_per_day() -> int:
    """Users one person may ask for in 24 hours through the form and the API."""
    return getattr(settings, "GENERATOR_MAX_USERS_PER_DAY", 100_000)


def backup_dir() -> Path:
    return Path(getattr(settings, "GENERATOR_BACKUP_DIR", Path(settings.BASE_DIR) / "backups"))


def backup_keep() -> int:
    return getattr(settings, "GENERATOR_BACKUP_KEEP", 24)


def backup_cron() -> str:
    """When RQ's cron scheduler backs the database up: a cron expression, checked here.

    RQ logs a bad expression and goes on without the job; a typo must not silently stop backups.
    """
    expression = getattr(settings, "GENERATOR_BACKUP_CRON", "0 * * * *")
    if not croniter.is_valid(expression):
        raise ImproperlyConfigured(
            f"GENERATOR_BACKUP_CRON must be a cron expression, not {expression!r}."
        )
    return expression
