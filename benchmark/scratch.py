"""The run's own storage: a scratch database on the configured server and a Redis DB index.

Everything runs against the configured database *server* and Redis, never their data: a scratch
database (`bench_<name>` on PostgreSQL, `.local/bench.sqlite3` on SQLite) is created, migrated and
dropped, and the queue lives in a Redis DB index of its own, flushed before and after.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.core.management.color import no_style
from django.db import OperationalError, connection
from django_rq.connection_utils import get_redis_connection
from redis import Redis

from generator import conf
from generator.models import Batch, BatchChunk, User

from . import BenchmarkError

LOCK_KEY = "generator:benchmark:lock"
# Long enough for the slowest full run; a run that dies without cleaning up is detected by pid.
LOCK_TTL_SECONDS = 6 * 60 * 60

Log = Callable[[str], None]
# PostgreSQL's deadlock_detected, and how often emptying the tables is tried when it is.
DEADLOCK_DETECTED = "40P01"
RESET_ATTEMPTS = 5


def scratch_database_name() -> str:
    """The run's own database: a file next to the project (SQLite) or bench_<name>."""
    if connection.vendor == "sqlite":
        return str(Path(settings.BASE_DIR) / ".local" / "bench.sqlite3")
    return f"bench_{connection.settings_dict['NAME']}"[:63]  # PostgreSQL's identifier limit


@contextmanager
def scratch_database(log: Log) -> Iterator[tuple[str, str]]:
    """Create and migrate the run's own database, switch to it, and drop it at the end.

    Yields its name and the DATABASE_URL that points a subprocess at it.
    """
    settings_dict = connection.settings_dict
    old_name, old_test = settings_dict["NAME"], settings_dict.get("TEST", {})
    name = scratch_database_name()
    if name == old_name:
        raise BenchmarkError(f"The scratch database would be the configured one ({name}).")
    url = subprocess_database_url(name)
    sqlite_files = [Path(name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    if connection.vendor == "sqlite":
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        # A stale WAL next to a new file would be replayed into it.
        for path in sqlite_files:
            path.unlink(missing_ok=True)
    settings_dict["TEST"] = {**old_test, "NAME": name}
    log(f"Creating and migrating the scratch database {name}")
    try:
        connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
        yield name, url
    finally:
        if settings_dict["NAME"] == name:
            log(f"Dropping the scratch database {name}")
            connection.creation.destroy_test_db(old_name, verbosity=0)
        settings_dict["TEST"] = old_test
        for path in sqlite_files if connection.vendor == "sqlite" else []:
            path.unlink(missing_ok=True)


def app_tables_reset() -> None:
    """Empty the user and batch tables (and what refers to them), as on a fresh install.

    So that each repetition of a figure starts from the same table, not from the one before's.
    Only between measurements, with no app process writing: the web process is stopped by
    then, and the person it logged in is deleted with the rest.
    """
    tables = [model._meta.db_table for model in (BatchChunk, Batch, User)]
    # PostgreSQL: TRUNCATE ... CASCADE. SQLite: DELETE FROM each table, which SQLite empties
    # in one go when no foreign key is checked (else it deletes row by row).
    statements = connection.ops.sql_flush(no_style(), tables, allow_cascade=True)
    for attempt in range(1, RESET_ATTEMPTS + 1):
        try:
            with connection.constraint_checks_disabled():
                connection.ops.execute_sql_flush(statements)
            break
        except OperationalError as error:
            # The idle worker's reconcile after its job (its reads lock the tables in another
            # order) can meet the TRUNCATE: PostgreSQL undoes one of the two, and either
            # tries again.
            deadlock = getattr(error.__cause__, "sqlstate", None) == DEADLOCK_DETECTED
            if not deadlock or attempt == RESET_ATTEMPTS:
                raise
            time.sleep(0.1 * attempt)
    if connection.vendor == "sqlite":
        # The emptied pages would stay in the file, scattered, for the next rows to reuse: a
        # fresh install has none (TRUNCATE gives PostgreSQL fresh files). Quick once empty.
        with connection.cursor() as cursor:
            cursor.execute("VACUUM")


def database_settle() -> None:
    """Write out what the last run left in the log (a CHECKPOINT; SQLite: its WAL into the
    file), so that the next timed run does not pay for the one before."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("CHECKPOINT")
        else:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def subprocess_database_url(name: str) -> str:
    """A DATABASE_URL for the scratch database, keeping the configured server and options."""
    if connection.vendor == "sqlite":
        return f"sqlite:///{name}"
    configured = os.environ.get("DATABASE_URL", "")
    if configured:
        return urlunsplit(urlsplit(configured)._replace(path="/" + quote(name)))
    params = connection.settings_dict
    user, password = quote(params["USER"] or "", safe=""), quote(params["PASSWORD"] or "", safe="")
    host, port = params["HOST"] or "localhost", params["PORT"] or 5432
    return f"postgres://{user}:{password}@{host}:{port}/{quote(name)}"


def bench_redis_url(url: str, db: int) -> str:
    """The configured Redis URL with its DB index replaced."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "db"]
    if parts.scheme == "unix":
        return urlunsplit(parts._replace(query=urlencode([*query, ("db", str(db))])))
    return urlunsplit(parts._replace(path=f"/{db}", query=urlencode(query)))


def redis_db_of(url: str) -> int:
    """The DB index a Redis URL selects."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "db" in query:
        return int(query["db"])
    path = parts.path.strip("/")
    return int(path) if parts.scheme != "unix" and path.isdigit() else 0


@dataclass
class ScratchRedis:
    """The run's Redis DB index, held under a lock so two runs never share it."""

    url: str
    db: int
    connection: Redis
    owner: str

    def reset(self) -> None:
        """Empty the index (it is ours alone), keeping the run's lock."""
        self.connection.flushdb()
        self.connection.set(LOCK_KEY, self.owner, ex=LOCK_TTL_SECONDS)


@contextmanager
def scratch_redis(db: int, log: Log) -> Iterator[ScratchRedis]:
    """Take a Redis DB index for this run, flush it, and flush it again at the end."""
    queue_config = settings.RQ_QUEUES[conf.queue_name()]
    if "URL" not in queue_config:
        raise BenchmarkError("The benchmark needs the queue configured with a URL (REDIS_URL).")
    configured = queue_config["URL"]
    if redis_db_of(configured) == db:
        raise BenchmarkError(f"The app's own queue is in Redis DB {db}: choose another --redis-db.")
    url = bench_redis_url(configured, db)
    scratch = ScratchRedis(
        url=url,
        db=db,
        connection=get_redis_connection({**queue_config, "URL": url}),
        owner=f"{socket.gethostname()}:{os.getpid()}",
    )
    _redis_claim(scratch)
    log(f"Using Redis DB {db} (flushed before and after)")
    scratch.reset()
    try:
        yield scratch
    finally:
        scratch.connection.flushdb()


def _redis_claim(scratch: ScratchRedis) -> None:
    """Refuse a DB index that holds someone's data or another live benchmark run."""
    redis, db = scratch.connection, scratch.db
    for key in redis.scan_iter(count=1000):
        name = key.decode(errors="replace")
        if not name.startswith("rq:") and name != LOCK_KEY:
            raise BenchmarkError(
                f"Redis DB {db} holds data that is not the benchmark's (key {name!r}): "
                "not flushing it. Choose another --redis-db."
            )
    if redis.set(LOCK_KEY, scratch.owner, nx=True, ex=LOCK_TTL_SECONDS):
        return
    value = redis.get(LOCK_KEY) or b""
    holder = value.decode() if isinstance(value, bytes) else value
    host, _, pid = holder.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid)):
        return  # left by a run that died without cleaning up
    raise BenchmarkError(f"Another benchmark ({holder}) is using Redis DB {db}.")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
