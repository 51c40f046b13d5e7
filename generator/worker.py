"""The worker class the Procfile runs."""

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from redis.exceptions import RedisError
from rq.serializers import DefaultSerializer
from rq.worker import HerokuWorker

from . import use_cases


class BatchWorker(HerokuWorker):
    """RQ's HerokuWorker (prompt stop on SIGTERM) that reconciles batches when it starts.

    A worker starting is the moment the previous one may have died: pick up its batches.
    It runs only the app's own jobs (generator.rq_guard, installed when Django starts) and
    refuses to start with pickle, which runs whatever code a job planted in Redis carries.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.serializer is DefaultSerializer:
            # rqworker's default, when the command line names no --serializer.
            raise ImproperlyConfigured(
                "BatchWorker reads JSON only: run it with "
                "--serializer rq.serializers.JSONSerializer"
            )

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        try:
            enqueued = use_cases.batches_reconcile()
        except RedisError:
            self.log.warning("batch reconcile skipped: Redis unreachable", exc_info=True)
        else:
            if enqueued:
                self.log.info("re-enqueued batches %s", enqueued)
        finally:
            # The work horse is forked: it must not inherit this process's connections.
            connections.close_all()
