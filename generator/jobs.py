"""RQ entry points: thin wrappers the worker runs around one service each."""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from . import services
from .models import Batch

logger = logging.getLogger(__name__)


def batch_run(batch_id: int) -> dict[str, Any]:
    """Create the users of one batch, reporting progress to the dashboard through job.meta."""
    job = get_current_job()

    def report(batch: Batch) -> None:
        if job is not None:
            job.meta.update(created=batch.created_count, total=batch.total)
            job.save_meta()

    try:
        batch = services.batch_generate_users(batch_id=batch_id, on_progress=report)
    except JobTimeoutException:
        services.batch_fail(
            batch_id=batch_id, reason="The batch took longer than the job time limit allows."
        )
        raise
    except DatabaseError:
        logger.exception("batch %s: database error", batch_id)
        services.batch_fail(
            batch_id=batch_id, reason="The database was unavailable while creating users."
        )
        raise
    except Exception:
        logger.exception("batch %s: unexpected error", batch_id)
        services.batch_fail(batch_id=batch_id, reason="An unexpected error stopped the batch.")
        raise
    return {"batch_id": batch.pk, "status": batch.status, "created": batch.created_count}
