"""Retrying a unit of database work that a passing fault interrupted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, connection

from .. import conf

logger = logging.getLogger(__name__)

# A username taken by a concurrent insert is worth a few tries before the job gives up.
CHUNK_ATTEMPTS = 5
RETRY_DELAY_SECONDS = 0.2
# A database out of reach (a restart, a fail-over, a locked SQLite file) is waited for, up to
# GENERATOR_DATABASE_WAIT_SECONDS, trying again at least this often.
LONGEST_RETRY_DELAY_SECONDS = 2.0
# SQLSTATE classes of a server out of reach: connection exceptions, and a server shutting down,
# crashed or starting up.
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def database_errors_retrying[T](attempt: Callable[[], T]) -> T:
    """Run `attempt` (one transaction), again on a fresh connection after a passing error."""
    waiting_since = None
    integrity_errors = 0
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except DatabaseError as error:
            interruption = interruption_behind(error)
            if interruption is not None:
                # A signal's exception (the job's time limit, a shutdown) landed while the
                # driver was busy and came out as a database error: it must stop the run,
                # and the connection it left half-way is of no further use.
                connection.close()
                raise interruption from error
            if _is_unreachable(error):
                waiting_since = waiting_since or time.monotonic()
                waited = time.monotonic() - waiting_since
                if waited > conf.database_wait_seconds():
                    raise
                logger.warning(
                    "database unreachable, waiting for it (%.0f s so far)",
                    waited,
                    exc_info=waited == 0,
                )
            elif isinstance(error, IntegrityError) and integrity_errors < CHUNK_ATTEMPTS - 1:
                integrity_errors += 1
                logger.warning(
                    "database error, retrying the chunk (%s/%s)",
                    integrity_errors,
                    CHUNK_ATTEMPTS,
                    exc_info=True,
                )
            else:
                raise
            # The connection may be dead (a restarted server, a killed backend): start afresh.
            connection.close()
            time.sleep(
                min(RETRY_DELAY_SECONDS * 2 ** min(tries - 1, 8), LONGEST_RETRY_DELAY_SECONDS)
            )


def _is_unreachable(error: DatabaseError) -> bool:
    """Whether the error says the database cannot be reached now, rather than that the work
    itself is wrong (a missing table, a full disk, a cancelled statement)."""
    if isinstance(error, InterfaceError):
        return True  # the connection is closed
    if not isinstance(error, OperationalError):
        return False
    if connection.vendor == "sqlite":
        return any(word in str(error) for word in ("locked", "busy"))
    sqlstate = getattr(error.__cause__, "sqlstate", None)
    # A connection the server dropped or refused carries no SQLSTATE.
    return sqlstate is None or sqlstate.startswith(UNREACHABLE_SQLSTATES)


def interruption_behind(error: BaseException) -> BaseException | None:
    """The exception, not the database's, that a database error was raised in handling."""
    # The driver's own errors too (the DB-API module every backend wrapper carries, untyped).
    database_errors = (DatabaseError, connection.Database.Error)  # type: ignore[attr-defined]
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if not isinstance(cause, database_errors):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None
