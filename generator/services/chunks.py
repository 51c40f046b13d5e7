"""Generating a batch's users: chunks claimed under a lease, filled and committed one by one.

A batch is cut into chunks when it is created. A run (one RQ job) claims a free chunk under
a lease, fills it and marks it done in one transaction that also adds to the batch's count,
then claims the next. Any number of runs may work on one batch at once, and a run may die at
any point: a chunk is either committed whole or free again once its lease is void (run out,
or its holder dead), so the batch always ends with exactly its total. Whether a holder is
alive is the queue's knowledge: the caller passes a function that tells.
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from .. import conf
from ..models import Batch, BatchChunk, LeaseHolder
from .accounts import chunk_faker, user_rows_make, users_insert
from .lifecycle import ProgressCallback, batch_release, batch_start
from .retries import database_errors_retrying
from .writers import UserRows, rows_made_ahead_help, written_out

logger = logging.getLogger(__name__)

# Those of the given holders that are dead or no longer run that job.
HoldersGone = Callable[[Collection[LeaseHolder]], set[LeaseHolder]]
NO_HOLDER: LeaseHolder = ("", "")
# What a chunk's rows depend on, beyond the batch: its index (seeded batches only), its size.
RowsKey = tuple[int | None, int]


def _none_gone(holders: Collection[LeaseHolder]) -> set[LeaseHolder]:
    return set()


def batch_generate_users(
    *,
    batch_id: int,
    run_id: str | None = None,
    holder: LeaseHolder = NO_HOLDER,
    holders_gone: HoldersGone = _none_gone,
    on_progress: ProgressCallback | None = None,
    keep_going: Callable[[], bool] = lambda: True,
    rng: random.Random | None = None,
) -> Batch:
    """Fill the batch's free chunks until none is left, and return the batch as it then is.

    Safe to call many times at once: each call claims different chunks, a dead run's first.
    `keep_going` is asked between chunks; once it says no, the run gives its leases back and
    stops.
    """
    run_id = run_id or uuid.uuid4().hex
    rng = rng or random.Random(secrets.randbits(64))
    lease = Lease(run_id=run_id, holder=holder, holders_gone=holders_gone)
    with RowsAhead(in_thread=rows_made_ahead_help()) as ahead:
        batch = _chunks_fill(
            batch_id=batch_id,
            lease=lease,
            on_progress=on_progress,
            keep_going=keep_going,
            rng=rng,
            ahead=ahead,
        )
    # After the last commit: the person's wait is over, the next batch's has not begun.
    written_out()
    return batch


def _chunks_fill(
    *,
    batch_id: int,
    lease: Lease,
    on_progress: ProgressCallback | None,
    keep_going: Callable[[], bool],
    rng: random.Random,
    ahead: RowsAhead,
) -> Batch:
    batch = batch_start(batch_id=batch_id)
    while batch.status == Batch.Status.RUNNING:
        if not keep_going():
            batch_release(batch_id=batch_id, run_id=lease.run_id)
            break
        claimed = database_errors_retrying(
            lambda: chunk_claim_and_fill(batch_id=batch_id, lease=lease, rng=rng, ahead=ahead)
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


@dataclass(frozen=True)
class Lease:
    """What a run writes on the chunks it claims, and how it judges the others' leases."""

    run_id: str
    holder: LeaseHolder = NO_HOLDER
    holders_gone: HoldersGone = _none_gone


class ChunkRows:
    """How one chunk's rows are made: its first rows, and more of the same stream on demand
    (for usernames found taken)."""

    def __init__(self, *, batch: Batch, index: int, size: int, rng: random.Random) -> None:
        if batch.seed is not None:
            # From (seed, chunk) alone, so neither the run that fills the chunk nor a retry
            # of it changes which accounts it makes.
            rng = random.Random(f"{batch.seed}:{index}")
        self.key = self.key_for(batch=batch, index=index, size=size)
        self.size = size
        self._password_hash = batch.password_hash
        self._rng = rng
        self._faker = chunk_faker(batch=batch, index=index, rng=rng)
        self.first = UserRows([], [], [], [], [])

    @staticmethod
    def key_for(*, batch: Batch, index: int, size: int) -> RowsKey:
        """What the rows depend on: without a seed, only how many."""
        return (index if batch.seed is not None else None, size)

    def make(self, count: int) -> UserRows:
        return user_rows_make(
            password_hash=self._password_hash, count=count, rng=self._rng, faker=self._faker
        )

    def with_first(self) -> ChunkRows:
        self.first = self.make(self.size)
        return self


class RowsAhead:
    """Makes the next chunk's rows in a thread while the database commits the current one.

    PostgreSQL's driver waits for the server without holding the GIL: making 20,000 rows takes
    ~20 ms of the ~80 ms the server spends on the commit (its foreign-key checks), and was a
    tenth of a million users' time, the server idle meanwhile. The guess is the chunk after the
    current one, the one a lone run claims next; another chunk claimed (a fan-out) makes its own
    rows. One chunk's rows are made at a time, in either thread, so that a chunk's random
    stream and the process's one Faker always go in the order they would without the thread.
    """

    def __init__(self, *, in_thread: bool) -> None:
        """Without the thread, every chunk's rows are made when it is filled."""
        self._executor = ThreadPoolExecutor(1, "rows-ahead") if in_thread else None
        self._next: Future[ChunkRows] | None = None

    def __enter__(self) -> RowsAhead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)

    def make_next(self, rows: Callable[[], ChunkRows]) -> None:
        if self._executor is not None:
            self._next = self._executor.submit(lambda: rows().with_first())

    def take(self, key: RowsKey, rows: Callable[[], ChunkRows]) -> ChunkRows:
        """The chunk's rows: made ahead if the guess was right, else made now."""
        made, self._next = self._next, None
        if made is not None:
            try:
                ahead = made.result()  # also waits: never two makings at once
            except Exception:
                # Only a guess failed: the chunk's rows are made again, here, where an error
                # that is not the guess's own shows for the chunk it belongs to.
                logger.warning("rows made ahead failed; making them in line", exc_info=True)
            else:
                if ahead.key == key:
                    return ahead
        return rows().with_first()


def chunk_claim_and_fill(
    *, batch_id: int, lease: Lease, rng: random.Random, ahead: RowsAhead | None = None
) -> tuple[BatchChunk, bool] | None:
    """The chunk claimed (None when none is free) and whether its users were committed."""
    chunk = chunk_claim(batch_id=batch_id, lease=lease)
    if chunk is None:
        return None
    return chunk, chunk_fill(chunk_id=chunk.pk, run_id=lease.run_id, rng=rng, ahead=ahead)


def chunk_claim(*, batch_id: int, lease: Lease) -> BatchChunk | None:
    """Lease the batch's first free chunk (or one whose lease is void) to the run."""
    now = timezone.now()
    claimable = (
        Q(lease_owner="")
        | Q(lease_owner=lease.run_id)
        | Q(lease_expires_at__lt=now)
        | Q(lease_expires_at__isnull=True)
    )
    for worker, job in _holders_gone(batch_id=batch_id, lease=lease):
        claimable |= Q(lease_worker=worker, lease_job=job)
    with transaction.atomic():
        # SKIP LOCKED lets parallel runs on PostgreSQL take different chunks without waiting
        # (and never one a live run is writing); SQLite has one writer at a time (IMMEDIATE
        # transactions), so the question is moot.
        chunk = (
            BatchChunk.objects.select_for_update(skip_locked=True)
            .filter(batch_id=batch_id, done=False)
            .filter(claimable)
            .order_by("index")
            .first()
        )
        if chunk is not None:
            chunk.lease_owner = lease.run_id
            chunk.lease_worker, chunk.lease_job = lease.holder
            chunk.lease_expires_at = now + timedelta(seconds=conf.lease_seconds())
            chunk.save(
                update_fields=["lease_owner", "lease_worker", "lease_job", "lease_expires_at"]
            )
    return chunk


def _holders_gone(*, batch_id: int, lease: Lease) -> set[LeaseHolder]:
    """The dead holders of the batch's other unexpired leases (most often: there are none)."""
    holders = set(
        BatchChunk.objects.filter(
            batch_id=batch_id, done=False, lease_expires_at__gte=timezone.now()
        )
        .exclude(lease_owner__in=["", lease.run_id])
        .exclude(lease_worker="")
        .values_list("lease_worker", "lease_job")
        .distinct()
    )
    return lease.holders_gone(holders) if holders else set()


def chunk_fill(
    *, chunk_id: int, run_id: str, rng: random.Random, ahead: RowsAhead | None = None
) -> bool:
    """Commit the chunk's users, its count and its end in one transaction, if the run still
    holds it and the batch still runs; whether it did."""
    ahead = ahead or RowsAhead(in_thread=False)
    with transaction.atomic():
        # The chunk locked, its batch read with it (not locked: other runs' chunks go on).
        chunk = (
            BatchChunk.objects.select_for_update(of=("self",))
            .select_related("batch")
            .get(pk=chunk_id)
        )
        if chunk.done or chunk.lease_owner != run_id:
            return False  # another run took it over after our lease ran out
        batch = chunk.batch
        if batch.status != Batch.Status.RUNNING:
            return False  # cancelled or failed meanwhile: stop between chunks
        rows = ahead.take(
            ChunkRows.key_for(batch=batch, index=chunk.index, size=chunk.size),
            partial(ChunkRows, batch=batch, index=chunk.index, size=chunk.size, rng=rng),
        )
        created = users_insert(batch=batch, rows=rows.first)
        while created < chunk.size:
            created += users_insert(batch=batch, rows=rows.make(chunk.size - created))
        # Counted only while the batch still runs: a cancel that committed while this chunk
        # was being written (PostgreSQL lets it) must find the users it reported, no more.
        counted = Batch.objects.filter(pk=batch.pk, status=Batch.Status.RUNNING).update(
            created_count=F("created_count") + created
        )
        if not counted:
            transaction.set_rollback(True)
            return False
        chunk.done = True
        chunk.lease_owner = chunk.lease_worker = chunk.lease_job = ""
        chunk.lease_expires_at = None
        chunk.save(
            update_fields=["done", "lease_owner", "lease_worker", "lease_job", "lease_expires_at"]
        )
        # The batch row is locked by the update above until commit, so exactly one run
        # sees the count reach the total and finishes the batch.
        finished = Batch.objects.filter(
            pk=batch.pk, status=Batch.Status.RUNNING, created_count__gte=F("total")
        ).update(status=Batch.Status.FINISHED, finished_at=timezone.now())
        # Last before the commit, the longest wait: a thread waking the main one waits for the
        # GIL, so it should start as the statements (each a wake) are done. The guess: the next
        # chunk in order, as big as this one (chunks are cut in order, all of one size but the
        # last); none once the batch is finished.
        following = min(chunk.size, batch.total - (chunk.index + 1) * chunk.size)
        if not finished and following > 0:
            ahead.make_next(
                partial(ChunkRows, batch=batch, index=chunk.index + 1, size=following, rng=rng)
            )
    return True
