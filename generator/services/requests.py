"""A batch asked for: its options, the limits a person's request is held to, its rows."""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from typing import NotRequired, TypedDict, Unpack

from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from .. import conf
from ..models import Batch, BatchChunk, User


class BatchOptions(TypedDict):
    """What a request for a batch says (the form's cleaned data, the API's, the CLI's)."""

    total: int
    # Shared by every account of the batch, or "" for unusable passwords. Hashed once, on
    # the way into the batch row: never stored, logged or queued as given.
    password: NotRequired[str]
    # Sent with the form, so a double submit finds the batch it already made.
    idempotency_key: NotRequired[uuid.UUID | None]
    realistic_names: NotRequired[bool]
    seed: NotRequired[int | None]


@sensitive_variables("password")
def batch_create(
    *,
    requested_by: User | None,
    total: int,
    password: str = "",
    chunk_size: int | None = None,
    idempotency_key: uuid.UUID | None = None,
    realistic_names: bool = False,
    seed: int | None = None,
) -> Batch:
    """Record a pending batch and its chunks; a shared password is hashed here, once."""
    chunk_size = chunk_size or conf.chunk_size()
    # Part of the caller's transaction, if any, whole: no savepoint (a round trip each way).
    with transaction.atomic(savepoint=False):
        batch = Batch.objects.create(
            requested_by=requested_by,
            total=total,
            password_hash=make_password(password) if password else "",
            idempotency_key=idempotency_key,
            realistic_names=realistic_names,
            seed=seed,
        )
        BatchChunk.objects.bulk_create(
            BatchChunk(batch=batch, index=index, size=min(chunk_size, total - index * chunk_size))
            for index in range(math.ceil(total / chunk_size))
        )
    return batch


@sensitive_variables("options")
def batch_request(*, requested_by: User, **options: Unpack[BatchOptions]) -> tuple[Batch, bool]:
    """A person's request: at most one batch per idempotency key, within their limits.

    Returns the batch and whether it is new. Raises ValidationError when a limit is reached.
    """
    idempotency_key = options.get("idempotency_key")
    with transaction.atomic(savepoint=False):
        requester_lock(requested_by)
        if idempotency_key is not None:
            existing = Batch.objects.filter(
                requested_by=requested_by, idempotency_key=idempotency_key
            ).first()
            if existing is not None:
                return existing, False
        _limits_check(requested_by=requested_by, total=options["total"])
        batch = batch_create(requested_by=requested_by, **options)
    return batch, True


def requester_lock(person: User) -> None:
    """Lock the person's row, so their concurrent requests are checked one at a time."""
    User.objects.select_for_update().filter(pk=person.pk).exists()


def active_limit_check(*, requested_by: User, active: int | None = None) -> None:
    """ValidationError when the person already has as many active batches as they may
    (`active`, when the caller counted them)."""
    if active is None:
        active = Batch.objects.active().filter(requested_by=requested_by).count()
    if active >= conf.max_active_batches_per_user():
        raise ValidationError(
            f"You already have {active} batches waiting or running: "
            "ask again when one of them has finished.",
            code="too_many_active_batches",
        )


def _limits_check(*, requested_by: User, total: int) -> None:
    since = timezone.now() - timedelta(days=1)
    # Both counts in one query.
    mine = Batch.objects.filter(requested_by=requested_by).aggregate(
        active=Count("pk", filter=Q(status__in=Batch.ACTIVE_STATUSES)),
        asked_today=Sum("total", filter=Q(created_at__gte=since)),
    )
    active_limit_check(requested_by=requested_by, active=mine["active"])
    asked_today = mine["asked_today"] or 0
    left = max(conf.max_users_per_day() - asked_today, 0)
    if total > left:
        raise ValidationError(
            f"You may ask for {conf.max_users_per_day()} users a day; {left} are left today.",
            code="daily_user_limit",
        )
