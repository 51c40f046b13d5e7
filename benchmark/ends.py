"""When a batch's last chunk committed, as seen from outside the app.

Every app figure ends here. On PostgreSQL the scratch database tells: a trigger on the batch row
sends a NOTIFY when the batch's status becomes a done one, and PostgreSQL delivers it only once
that transaction has committed (the status is set in the last chunk's transaction), so the
moment a listening thread receives it is the commit, give or take the delivery (well under a
millisecond on a loopback). Nothing polls the server while the app works: looking every
millisecond took a share of the CPU that the web process, the worker and the server share with
this process (measured on 2 cores: the seen lag 2-10 ms after the commit, and the work itself
slower). The trigger is the benchmark's, in its scratch database only, and fires once per
batch. SQLite has no such thing: there this process looks every few milliseconds, counting a
little long, never short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, connection, connections

from generator.models import Batch

from . import BenchmarkError

CHANNEL = "benchmark_batch_done"
# How often SQLite is looked at: the end-to-end figure is the first look that sees it, so it is
# at most this much too long. A big batch is looked at less often, so that the looks take less
# of the CPU the worker and the database share with this process.
POLL_SECONDS_SMALL = 0.001
POLL_SECONDS_BIG = 0.01
SMALL_BATCH = 10_000
# How often a waiting look checks that the workers still live and the deadline.
CHECK_SECONDS = 0.05

# Called while waiting: raises BenchmarkError when the wait is hopeless (a worker died).
Check = Callable[[], None]


class BatchLate(BenchmarkError):
    """The batch did not end before its deadline."""


class BatchEnds:
    """Tells when each batch was first seen done (`time.perf_counter()`)."""

    def wait(self, batch_id: int, *, total: int, deadline: float, check: Check) -> float:
        raise NotImplementedError

    def close(self) -> None:
        pass


class PolledEnds(BatchEnds):
    """SQLite: the batch row looked at every few milliseconds."""

    def wait(self, batch_id: int, *, total: int, deadline: float, check: Check) -> float:
        poll = POLL_SECONDS_SMALL if total <= SMALL_BATCH else POLL_SECONDS_BIG
        done = Batch.objects.filter(pk=batch_id, status__in=Batch.DONE_STATUSES)
        while not done.exists():
            check()
            if time.monotonic() > deadline:
                raise BatchLate(f"Batch {batch_id} did not finish in time.")
            time.sleep(poll)
        return time.perf_counter()


class NotifiedEnds(BatchEnds):
    """PostgreSQL: a thread listens for the trigger's NOTIFY and notes when each arrives."""

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._listen, name="batch-ends", daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout=30) or self._error is not None:
            raise BenchmarkError(f"Could not listen for batch ends: {self._error}")

    def _listen(self) -> None:
        # A connection of its own, made in this thread: Django's are one per thread.
        database = connections.create_connection(DEFAULT_DB_ALIAS)
        try:
            database.ensure_connection()
            listener = database.connection
            listener.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            while not self._stop.is_set():
                for note in listener.notifies(timeout=0.2):
                    arrived = time.perf_counter()
                    with self._arrived:
                        self._seen.setdefault(int(note.payload), arrived)
                        self._arrived.notify_all()
        except BaseException as error:
            self._error = error
            self._listening.set()  # what failed is told at once, not after the wait
            with self._arrived:
                self._arrived.notify_all()
        finally:
            database.close()

    def wait(self, batch_id: int, *, total: int, deadline: float, check: Check) -> float:
        with self._arrived:
            while batch_id not in self._seen:
                if self._error is not None:
                    raise BenchmarkError(f"Stopped listening for batch ends: {self._error}")
                check()
                if time.monotonic() > deadline:
                    raise BatchLate(f"Batch {batch_id} did not finish in time.")
                self._arrived.wait(timeout=CHECK_SECONDS)
            return self._seen.pop(batch_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextmanager
def batch_ends() -> Iterator[BatchEnds]:
    """What tells batch ends on this engine, for the scratch database's lifetime."""
    if connection.vendor != "postgresql":
        yield PolledEnds()
        return
    ends_notify_install()
    ends = NotifiedEnds()
    try:
        yield ends
    finally:
        ends.close()


def ends_notify_install() -> None:
    """The trigger that NOTIFYs a batch's id when its status becomes a done one."""
    table = connection.ops.quote_name(Batch._meta.db_table)
    done = ", ".join(f"'{status}'" for status in sorted(Batch.DONE_STATUSES))
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE OR REPLACE FUNCTION {CHANNEL}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN PERFORM pg_notify('{CHANNEL}', NEW.id::text); RETURN NULL; END $$"
        )
        cursor.execute(
            f"CREATE OR REPLACE TRIGGER {CHANNEL} AFTER UPDATE OF status ON {table} "
            f"FOR EACH ROW WHEN (NEW.status IN ({done}) AND OLD.status IS DISTINCT FROM "
            f"NEW.status) EXECUTE FUNCTION {CHANNEL}()"
        )
