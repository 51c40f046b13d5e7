"""Reads: what a person may see and manage, and a batch's accounts for export."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from .models import Batch, User

ADD_BATCH_PERMISSION = "generator.add_batch"
# The staff flag alone opens nothing: seeing or managing other people's batches and accounts
# takes the model permission (superusers have them all).
VIEW_ANY_BATCH_PERMISSION = "generator.view_batch"
MANAGE_ANY_BATCH_PERMISSION = "generator.change_batch"
VIEW_ANY_USER_PERMISSION = "generator.view_user"


def can_manage(user: User, batch: Batch) -> bool:
    """Who may cancel, resume or undo a batch: someone who may generate users, for their own
    batches, or for any batch with the permission to change batches."""
    if not user.has_perm(ADD_BATCH_PERMISSION):
        return False
    return batch.requested_by_id == user.pk or user.has_perm(MANAGE_ANY_BATCH_PERMISSION)


def can_manage_any(user: User) -> bool:
    """May manage every batch (the admin's actions): generate, and change batches."""
    return user.has_perm(ADD_BATCH_PERMISSION) and user.has_perm(MANAGE_ANY_BATCH_PERMISSION)


def batches_visible_to(user: User) -> QuerySet[Batch]:
    """With the view permission, every batch; everyone else sees the batches they asked for."""
    batches = Batch.objects.select_related("requested_by")
    if user.has_perm(VIEW_ANY_BATCH_PERMISSION):
        return batches
    return batches.filter(requested_by=user)


def can_read_accounts_of(user: User, batch: Batch) -> bool:
    """The accounts of one's own batches; anyone else's with the user model's view permission
    (seeing another person's batch is not enough)."""
    return batch.requested_by_id == user.pk or user.has_perm(VIEW_ANY_USER_PERMISSION)


def users_visible_to(user: User, *, batch: Batch | None = None) -> QuerySet[User]:
    """Newest first; with the user model's view permission, every account, else the accounts
    of one's own batches."""
    users = User.objects.order_by("-id")
    if batch is not None:
        return users.filter(batch=batch) if can_read_accounts_of(user, batch) else users.none()
    if user.has_perm(VIEW_ANY_USER_PERMISSION):
        return users
    return users.filter(batch__requested_by=user)


EXPORT_COLUMNS = ["username", "email", "first_name", "last_name", "date_joined"]


def batch_users_export_rows(batch: Batch, *, chunk_size: int = 2_000) -> Iterator[tuple[Any, ...]]:
    """The batch's accounts as export rows, read in chunks so memory stays flat in N.

    Never a password column: the export is meant to be shared.
    """
    rows = (
        User.objects.filter(batch=batch)
        .order_by("pk")
        .values_list(*EXPORT_COLUMNS)
        .iterator(chunk_size=chunk_size)
    )
    for username, email, first_name, last_name, date_joined in rows:
        yield username, email, first_name, last_name, date_joined.isoformat()
