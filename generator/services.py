"""State changes: recording batches and generating their users. Knows nothing of HTTP or RQ."""

from __future__ import annotations

import logging
import random
import secrets
import string
from collections.abc import Callable

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX, make_password
from django.db import transaction
from django.utils import timezone

from . import conf
from .models import Batch, User

logger = logging.getLogger(__name__)

USERNAME_PREFIX = "user_"
USERNAME_RANDOM_LENGTH = 10
EMAIL_DOMAIN = "example.com"

ProgressCallback = Callable[[Batch], None]


def batch_create(*, requested_by: User | None, total: int, password: str = "") -> Batch:
    """Record a pending batch; a shared password is hashed here, once for the whole batch."""
    return Batch.objects.create(
        requested_by=requested_by,
        total=total,
        password_hash=make_password(password) if password else "",
    )


def batch_generate_users(
    *,
    batch_id: int,
    chunk_size: int | None = None,
    on_progress: ProgressCallback | None = None,
    rng: random.Random | None = None,
) -> Batch:
    """Create the batch's missing users, one transaction per chunk, and finish it.

    Each chunk commits its users together with the batch's new count, so a rerun after a
    crash fills only what is missing and a batch never ends with more than it asked for.
    """
    chunk_size = chunk_size or conf.chunk_size()
    batch = _batch_mark_running(batch_id)
    rng = rng or random.Random(secrets.randbits(64))
    while not batch.is_done:
        with transaction.atomic():
            # The row lock serialises two runs of the same batch (SQLite: the IMMEDIATE
            # transaction does the same), so the count they both read is the true one.
            batch = Batch.objects.select_for_update().get(pk=batch_id)
            missing = batch.total - batch.created_count
            if missing > 0:
                batch.created_count += _users_insert(
                    batch=batch, count=min(chunk_size, missing), rng=rng
                )
            if batch.created_count >= batch.total:
                batch.status = Batch.Status.FINISHED
                batch.finished_at = timezone.now()
            batch.save(update_fields=["created_count", "status", "finished_at"])
        logger.info(
            "batch %s: %s/%s users (%.0f users/s)",
            batch.pk,
            batch.created_count,
            batch.total,
            batch.rate or 0,
        )
        if on_progress is not None:
            on_progress(batch)
    return batch


def batch_fail(*, batch_id: int, reason: str) -> None:
    """Mark an unfinished batch failed with a reason a person can read."""
    Batch.objects.filter(pk=batch_id).exclude(status=Batch.Status.FINISHED).update(
        status=Batch.Status.FAILED, failure_reason=reason, finished_at=timezone.now()
    )


def _batch_mark_running(batch_id: int) -> Batch:
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        if batch.is_done:
            return batch
        batch.status = Batch.Status.RUNNING
        batch.started_at = batch.started_at or timezone.now()
        batch.failure_reason = ""
        batch.save(update_fields=["status", "started_at", "failure_reason"])
    return batch


def random_username(rng: random.Random) -> str:
    return USERNAME_PREFIX + "".join(rng.choices(string.ascii_letters, k=USERNAME_RANDOM_LENGTH))


def _users_insert(*, batch: Batch, count: int, rng: random.Random) -> int:
    """Insert up to `count` users for the batch and return how many were inserted.

    A name already taken (by anyone) is skipped, not an error: the caller's loop asks for
    the difference in the next chunk.
    """
    usernames: set[str] = set()
    while len(usernames) < count:
        usernames.add(random_username(rng))
    now = timezone.now()
    User.objects.bulk_create(
        [
            User(
                username=username,
                email=f"{username}@{EMAIL_DOMAIN}",
                # A random unusable password per account when no shared password was asked for:
                # cheap, and nothing can log in with it.
                password=batch.password_hash or UNUSABLE_PASSWORD_PREFIX + secrets.token_hex(20),
                date_joined=now,
                batch_id=batch.pk,
            )
            for username in usernames
        ],
        ignore_conflicts=True,
    )
    return User.objects.filter(batch_id=batch.pk, username__in=usernames).count()
