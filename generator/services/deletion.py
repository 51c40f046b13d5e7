"""Undoing a batch: deleting its users, one transaction per chunk, the counts kept as history."""

from __future__ import annotations

import logging
import time

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .. import conf
from ..models import Batch, BatchChunk, User
from .lifecycle import ProgressCallback
from .retries import RETRY_DELAY_SECONDS, database_errors_retrying

logger = logging.getLogger(__name__)


def batch_users_delete_request(*, batch_id: int) -> Batch:
    """Mark an ended batch (or one being deleted) for the deletion of its users;
    ValidationError while it generates."""
    with transaction.atomic():
        marked = (
            Batch.objects.deletable()
            .filter(pk=batch_id)
            .update(status=Batch.Status.DELETING, deleted_at=None)
        )
        batch = Batch.objects.get(pk=batch_id)
    if not marked and batch.is_generating:
        raise ValidationError(
            f"Batch #{batch_id} is still creating users: cancel it first, then delete them.",
            code="batch_still_generating",
        )
    return batch


def batch_users_delete(*, batch_id: int, on_progress: ProgressCallback | None = None) -> Batch:
    """Delete the users of a batch marked for deletion, one transaction per chunk.

    Safe to run again or several times at once: each run deletes what is left.
    """
    batch = Batch.objects.get(pk=batch_id)
    while batch.status == Batch.Status.DELETING:
        deleted = database_errors_retrying(lambda: _users_delete_chunk(batch_id=batch_id))
        if not deleted and database_errors_retrying(
            lambda: _users_delete_finish(batch_id=batch_id)
        ):
            return Batch.objects.get(pk=batch_id)
        batch = Batch.objects.get(pk=batch_id)
        if deleted:
            logger.info(
                "batch %s: %s users deleted, %s so far", batch_id, deleted, batch.deleted_count
            )
            if on_progress is not None:
                on_progress(batch)
        else:
            # Another run holds the rest: let it commit before looking again.
            time.sleep(RETRY_DELAY_SECONDS)
    return batch


def _users_delete_chunk(*, batch_id: int) -> int:
    with transaction.atomic():
        # SKIP LOCKED: parallel runs on PostgreSQL delete different users instead of waiting.
        pks = list(
            User.objects.select_for_update(skip_locked=True)
            .filter(batch_id=batch_id)
            .order_by("pk")
            .values_list("pk", flat=True)[: conf.chunk_size()]
        )
        if not pks:
            return 0
        _, per_model = User.objects.filter(pk__in=pks, batch_id=batch_id).delete()
        deleted = per_model.get(User._meta.label, 0)
        Batch.objects.filter(pk=batch_id).update(deleted_count=F("deleted_count") + deleted)
    return deleted


def _users_delete_finish(*, batch_id: int) -> bool:
    with transaction.atomic():
        # A run that saw the batch running just before it was cancelled may still be filling
        # a chunk: waiting for every chunk's lock lets it commit, and its users show below.
        list(BatchChunk.objects.select_for_update().filter(batch_id=batch_id).values("pk"))
        if User.objects.filter(batch_id=batch_id).exists():
            return False
        Batch.objects.filter(pk=batch_id, status=Batch.Status.DELETING).update(
            status=Batch.Status.DELETED, deleted_at=timezone.now()
        )
    return True
