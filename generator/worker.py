"""The worker class the Procfile runs."""

from typing import Any

from django.db import connections
from redis.exceptions import RedisError
from rq.worker import HerokuWorker

from . import queueing


class BatchWorker(HerokuWorker):
    """RQ's HerokuWorker (prompt stop on SIGTERM) that reconciles batches when it starts.

    A worker starting is the moment the previous one may have died: pick up its batches.
    """

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        try:
            enqueued = queueing.batches_reconcile()
        except RedisError:
            self.log.warning("batch reconcile skipped: Redis unreachable", exc_info=True)
        else:
            if enqueued:
                self.log.info("re-enqueued batches %s", enqueued)
        finally:
            # The work horse is forked: it must not inherit this process's connections.
            connections.close_all()
