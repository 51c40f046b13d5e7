"""Logging for the app's processes."""

from __future__ import annotations

import logging
import sys

from rq.exceptions import ShutDownImminentException
from rq.timeouts import JobTimeoutException

# Raised by RQ's signal handlers into whatever line the work horse is running.
JOB_INTERRUPTIONS = (JobTimeoutException, ShutDownImminentException)


class InterruptibleStreamHandler(logging.StreamHandler):
    """The console handler, letting RQ's job interruptions through.

    logging swallows any exception raised while it writes a record. RQ's time limit and a
    warm shutdown arrive as exceptions raised at whatever line is running; one landing in a
    log write (seen: a batch logs every chunk) was lost, and the job ran on past its limit.
    """

    def handleError(self, record: logging.LogRecord) -> None:
        interruption = sys.exc_info()[1]
        if isinstance(interruption, JOB_INTERRUPTIONS):
            raise interruption
        super().handleError(record)
