from typing import Any

import django_rq
import rq.cron
from django_rq.management.commands.rqcron import Command as DjangoRQCronCommand
from redis import Redis
from rq.queue import Queue


def configured_queue(name: str, connection: Redis | None = None, **kwargs: Any) -> Queue:
    return django_rq.get_queue(name)


class Command(DjangoRQCronCommand):
    """django-rq's rqcron, enqueueing with each queue's configured (JSON) serializer.

    RQ 2.12's CronJob.enqueue builds a bare Queue, which pickles; our workers accept JSON only.
    """

    def handle(self, *args: Any, **options: Any) -> None:
        rq.cron.Queue = configured_queue  # type: ignore[misc, assignment]
        super().handle(*args, **options)
