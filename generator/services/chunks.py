"""Generating a batch's users: chunks claimed under a lease, filled and committed one by one.

A batch is cut into chunks when it is created. A run (one RQ job) claims a free chunk under
a lease, fills it and marks it done in one transaction that also adds to the batch's count,
then claims the next. Any number of runs may work on one batch at once, and a run may die at
any point: a chunk is either committed whole or free again once its lease runs out, so the
batch always ends with exactly its total.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import conf
from ..models import Batch, BatchChunk
from .accounts import chunk_faker, users_insert
from .lifecycle import ProgressCallback, batch_start
from .retries import database_errors_retrying

logger = logging.getLogger(__name__)


def batch_generate_users(
    *,
    batch_id: int,
    run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
    rng: random.Random | None = None,
) -> Batch:
    """Fill the batch's free chunks until none is left, and return the batch as it then is.

    Safe to call many times at once: each call claims different chunks.
    """
    run_id = run_id or uuid.uuid4().hex
    rng = rng or random.Random(secrets.randbits(64))
    batch = batch_start(batch_id=batch_id)
    while batch.status == Batch.Status.RUNNING:
        claimed = database_errors_retrying(
            lambda: chunk_claim_and_fill(batch_id=batch_id, run_id=run_id, rng=rng)
        )
        batch = database_errors_retrying(lambda: Batch.objects.get(pk=batch_id))
        if claimed is None:
            break
        chunk, filled = claimed
        if not filled:
            continue  # its lease was lost, or the batch stopped: nothing to report
        logger.info(
            "batch %s: chunk %s done, %s/%s users (%.0f users/s)",
            batch_id,
            chunk.index,
            batch.created_count,
            batch.total,
            batch.rate or 0,
        )
        if on_progress is not None:
            on_progress(batch)
    return batch


def chunk_claim_and_fill(
    *, batch_id: int, run_id: str, rng: random.Random
) -> tuple[BatchChunk, bool] | None:
    """The chunk claimed (None when none is free) and whether its users were committed."""
    chunk = chunk_claim(batch_id=batch_id, run_id=run_id)
    if chunk is None:
        return None
    return chunk, chunk_fill(chunk_id=chunk.pk, run_id=run_id, rng=rng)


def chunk_claim(*, batch_id: int, run_id: str) -> BatchChunk | None:
    """Lease the batch's first free chunk (or one whose lease ran out) to the run."""
    now = timezone.now()
    with transaction.atomic():
        # SKIP LOCKED lets parallel runs on PostgreSQL take different chunks without waiting;
        # SQLite has one writer at a time (IMMEDIATE transactions), so the question is moot.
        chunk = (
            BatchChunk.objects.select_for_update(skip_locked=True)
            .filter(batch_id=batch_id, done=False)
            .filter(
                Q(lease_owner="")
                | Q(lease_owner=run_id)
                | Q(lease_expires_at__lt=now)
                | Q(lease_expires_at__isnull=True)
            )
            .order_by("index")
            .first()
        )
        if chunk is not None:
            chunk.lease_owner = run_id
            chunk.lease_expires_at = now + timedelta(seconds=conf.lease_seconds())
            chunk.save(update_fields=["lease_owner", "lease_expires_at"])
    return chunk


def chunk_fill(*, chunk_id: int, run_id: str, rng: random.Random) -> bool:
    """Commit the chunk's users, its count and its end in one transaction, if the run still
    holds it and the batch still runs; whether it did."""
    with transaction.atomic():
        chunk = BatchChunk.objects.select_for_update().get(pk=chunk_id)
        if chunk.done or chunk.lease_owner != run_id:
            return False  # another run took it over after our lease ran out
        batch = Batch.objects.only("status", "password_hash", "realistic_names", "seed").get(
            pk=chunk.batch_id
        )
        if batch.status != Batch.Status.RUNNING:
            return False  # cancelled or failed meanwhile: stop between chunks
        if batch.seed is not None:
            # From (seed, chunk) alone, so neither the run that fills the chunk nor a retry
            # of it changes which accounts it makes.
            rng = random.Random(f"{batch.seed}:{chunk.index}")
        faker = chunk_faker(batch=batch, chunk=chunk, rng=rng)
        created = 0
        while created < chunk.size:
            created += users_insert(batch=batch, count=chunk.size - created, rng=rng, faker=faker)
        # Counted only while the batch still runs: a cancel that committed while this chunk
        # was being written (PostgreSQL lets it) must find the users it reported, no more.
        counted = Batch.objects.filter(pk=batch.pk, status=Batch.Status.RUNNING).update(
            created_count=F("created_count") + created
        )
        if not counted:
            transaction.set_rollback(True)
            return False
        chunk.done = True
        chunk.lease_owner = ""
        chunk.lease_expires_at = None
        chunk.save(update_fields=["done", "lease_owner", "lease_expires_at"])
        # The batch row is locked by the update above until commit, so exactly one run
        # sees the count reach the total and finishes the batch.
        Batch.objects.filter(
            pk=batch.pk, status=Batch.Status.RUNNING, created_count__gte=F("total")
        ).update(status=Batch.Status.FINISHED, finished_at=timezone.now())
    return True
