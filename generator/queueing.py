"""Putting batches on the RQ queue: after commit, under a job id of our own."""

from __future__ import annotations

import logging
from functools import partial

import django_rq
from django.db import transaction
from redis.exceptions import RedisError

from . import conf, jobs, services
from .models import Batch, User

logger = logging.getLogger(__name__)


def batch_enqueue(batch_id: int) -> bool:
    """Enqueue the batch's job; False (and logged) when Redis cannot be reached."""
    queue = django_rq.get_queue(conf.queue_name())
    try:
        queue.enqueue(
            jobs.batch_run,
            batch_id,
            job_id=Batch(pk=batch_id).job_id,
            job_timeout=conf.job_timeout(),
            description=f"Generate the users of batch #{batch_id}",
        )
    except RedisError:
        logger.warning("batch %s: Redis unreachable, left pending", batch_id, exc_info=True)
        return False
    return True


def batch_submit(*, requested_by: User | None, total: int, password: str = "") -> Batch:
    """Record a batch, then enqueue its job once the row is committed."""
    with transaction.atomic():
        batch = services.batch_create(requested_by=requested_by, total=total, password=password)
        # Enqueued after commit: a worker must never pick up a batch it cannot read yet.
        transaction.on_commit(partial(batch_enqueue, batch.pk))
    return batch
