"""The worker's log lines never swallow RQ's job interruptions."""

import io
import logging

import pytest
from rq.timeouts import JobTimeoutException

from generator.log import InterruptibleStreamHandler


class InterruptedStream(io.StringIO):
    """A stream whose write is hit by the job's time limit, as SIGALRM may hit any line."""

    def write(self, text: str) -> int:
        raise JobTimeoutException("Task exceeded maximum timeout value (1 seconds)")


def logger_writing_to(stream: io.StringIO) -> logging.Logger:
    logger = logging.getLogger(f"generator.tests.{id(stream)}")
    logger.propagate = False
    logger.addHandler(InterruptibleStreamHandler(stream))
    return logger


def test_a_job_time_limit_landing_in_a_log_write_still_stops_the_job():
    with pytest.raises(JobTimeoutException):
        logger_writing_to(InterruptedStream()).warning("batch 1: chunk 2 done")


def test_other_log_write_errors_are_reported_not_raised(capsys):
    class BrokenStream(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("disk full")

    logger_writing_to(BrokenStream()).warning("batch 1: chunk 2 done")

    assert "--- Logging error ---" in capsys.readouterr().err
