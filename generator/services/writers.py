"""Raw SQL writers for generated users: the engine's fastest way in, skipping taken usernames.

Plain values written in bulk, not the ORM's bulk_create: profiled on 200k users, that spent
~85% of the time building model instances and compiling SQL, four times the database's own
time. An adapter: it takes rows and knows nothing of batches or of who calls it.

Only what differs from row to row travels with the rows (UserRows, a list per column); what
every row of one call shares (SharedValues) is written into the statement once. On SQLite each
bound value costs a bind per row; on PostgreSQL the shared columns are one pre-formatted line
ending.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from django.db import DatabaseError, IntegrityError, connection, transaction

from ..models import User

logger = logging.getLogger(__name__)

# What differs from row to row, in the order of UserRows' columns.
ROW_COLUMNS = ("username", "email", "first_name", "last_name", "password")
UserRow = tuple[str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class UserRows:
    """Accounts to insert, a list per column of ROW_COLUMNS: account i is item i of each.

    Columns, not a tuple per account: PostgreSQL's COPY text needs each row's tuple only for a
    moment (zip reuses its own). Tuples kept per account are work for the cyclic garbage
    collector and to build and free: a million users on PostgreSQL took the worker 2.4-2.7 µs
    of CPU per row with them, 2.0-2.1 µs without (measured in-process, three runs each, taking
    turns). SQLite's executemany takes the tuples all at once, as before.
    """

    usernames: list[str]
    emails: list[str]
    first_names: list[str]
    last_names: list[str]
    passwords: list[str]

    def __post_init__(self) -> None:
        if len({len(column) for column in self.columns()}) > 1:
            raise ValueError("Every column of the rows must be as long as the others.")

    def __len__(self) -> int:
        return len(self.usernames)

    def __iter__(self) -> Iterator[UserRow]:
        """Each account's row, in the order of ROW_COLUMNS."""
        return zip(*self.columns(), strict=True)

    def columns(self) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
        """The lists, in the order of ROW_COLUMNS."""
        return (self.usernames, self.emails, self.first_names, self.last_names, self.passwords)


class SharedValues(NamedTuple):
    """The columns every row of one insert has in common (their names are the columns')."""

    date_joined: datetime
    batch_id: int
    last_login: None
    is_superuser: bool
    is_staff: bool
    is_active: bool


# The user table's columns a generated account sets, in the order the writers list them.
USER_INSERT_COLUMNS = ROW_COLUMNS + SharedValues._fields
USER_STAGING_TABLE = "generator_user_staging"
# PostgreSQL's unique_violation: the one error after which a chunk's COPY is redone skipping
# taken usernames.
UNIQUE_VIOLATION = "23505"
# Rows formatted per piece of a COPY: the server inserts one piece while the next is formatted.
COPY_PIECE_ROWS = 1_000


def user_rows_insert(rows: UserRows, shared: SharedValues) -> int:
    """Insert the rows, skipping any whose username is taken, even by a transaction running at
    the same time; return how many were inserted. Runs inside the caller's transaction."""
    if connection.vendor == "postgresql":
        return _user_rows_copy(rows, shared)
    return _user_rows_executemany(rows, shared)


def rows_made_ahead_help() -> bool:
    """Whether making the next rows in a thread, while this engine writes others, pays.

    PostgreSQL's driver waits for the server without the GIL for a whole COPY or commit.
    SQLite's executemany takes the GIL back after every row it steps, so a thread making rows
    meanwhile only takes turns with it.
    """
    return connection.vendor == "postgresql"


def written_out() -> None:
    """Copy what the last commits left in SQLite's write-ahead log into the database file, now,
    between batches, rather than inside the next batch's commits (a no-op on PostgreSQL, whose
    checkpointer works in the background).

    SQLite copies it back once the log reaches SQLITE_WAL_CHECKPOINT_BYTES, at the commit that
    got there: measured, the five batches of the benchmark's growth series came out
    105k, 98k, 85k, 97k, 80k users/s, the slow ones those whose commits copied the log. PASSIVE:
    it waits for no reader nor writer, and copies what it can.
    """
    if connection.vendor != "sqlite":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except DatabaseError:
        # Only the copy is put off: SQLite makes it at a later commit.
        logger.warning("write-ahead log not copied back after the batch", exc_info=True)


def _user_insert_sql(*, source: str) -> str:
    quote = connection.ops.quote_name
    return (
        f"INSERT INTO {quote(User._meta.db_table)} ({_quoted_columns()}) {source} "
        f"ON CONFLICT ({quote('username')}) DO NOTHING"
    )


def _quoted_columns() -> str:
    return ", ".join(connection.ops.quote_name(column) for column in USER_INSERT_COLUMNS)


def _user_rows_executemany(rows: UserRows, shared: SharedValues) -> int:
    values = ["%s"] * len(ROW_COLUMNS) + [_sqlite_literal(value) for value in shared]
    with connection.cursor() as cursor:
        cursor.executemany(_user_insert_sql(source=f"VALUES ({', '.join(values)})"), list(rows))
        return cursor.rowcount


def _sqlite_literal(value: object) -> str:
    """A shared value as an SQLite literal, so that it is not bound again for every row.

    Only for values the app itself makes (a time, a batch id, flags, NULL), never for text a
    person typed; quoted all the same.
    """
    if value is None:
        literal = "NULL"
    elif isinstance(value, bool):
        literal = "1" if value else "0"
    elif isinstance(value, int):
        literal = str(int(value))
    elif isinstance(value, datetime):
        adapted = connection.ops.adapt_datetimefield_value(value)
        literal = "'" + str(adapted).replace("'", "''") + "'"
    else:
        raise TypeError(f"No SQLite literal for a {type(value).__name__}.")
    # Django's SQLite cursor reads %s as a placeholder and %% as a percent sign.
    return literal.replace("%", "%%")


def _user_rows_copy(rows: UserRows, shared: SharedValues) -> int:
    """PostgreSQL: COPY the rows straight into the user table; only if a username is taken,
    COPY them into a staging table and INSERT ... SELECT ... ON CONFLICT DO NOTHING instead.

    COPY streams rows without a statement each; it measured 2-3x the rate of executemany
    here. Writing the rows once instead of twice (staging, then table) measured 59k -> 80k
    users/s on 200k. COPY cannot skip a taken username: it fails whole, and the savepoint
    undoes only it. With 52^10 possible names a clash is rare, so the fallback is too.
    """
    try:
        with transaction.atomic():
            _copy_into(User._meta.db_table, rows, shared)
    except IntegrityError as error:
        if getattr(error.__cause__, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
        return _user_rows_copy_skipping_taken(rows, shared)
    return len(rows)


def _user_rows_copy_skipping_taken(rows: UserRows, shared: SharedValues) -> int:
    """The staging table lives only for the chunk's transaction (and so also suits a
    transaction-pooling proxy)."""
    quote = connection.ops.quote_name
    staging, columns = quote(USER_STAGING_TABLE), _quoted_columns()
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ON COMMIT DROP AS "
            f"SELECT {columns} FROM {quote(User._meta.db_table)} WITH NO DATA"
        )
        _copy_into(USER_STAGING_TABLE, rows, shared)
        cursor.execute(_user_insert_sql(source=f"SELECT {columns} FROM {staging}"))
        inserted = cursor.rowcount
        # Emptied for the next call in the same transaction (after skipped usernames).
        cursor.execute(f"TRUNCATE {staging}")
    return inserted


def _copy_into(table: str, rows: UserRows, shared: SharedValues) -> None:
    copy_sql = f"COPY {connection.ops.quote_name(table)} ({_quoted_columns()}) FROM STDIN"
    # The raw psycopg cursor: its errors must still come out as Django's, which the chunk's
    # retry (a killed backend, a restarted server) and the fallback above know.
    with (
        connection.cursor() as cursor,
        connection.wrap_database_errors,
        cursor.cursor.copy(copy_sql) as copy,
    ):
        for piece in _copy_text(rows, shared):
            copy.write(piece)


def _copy_text(rows: UserRows, shared: SharedValues) -> Iterator[str]:
    """The rows in COPY's text format, a piece at a time.

    Formatted here rather than by psycopg's write_row: that adapts all eleven values of each
    row one by one (profiled: a seventh of a chunk's time), where the shared columns are one
    line ending formatted once.
    """
    ending = "\t" + "\t".join(_copy_value(value) for value in shared) + "\n"
    columns: Sequence[Sequence[str]] = rows.columns()
    # The app's own values hold no tab, newline, carriage return or backslash: looked for in
    # each column's values at once (in C, cheap), they need no escaping.
    if not all(map(_copy_plain, columns)):
        columns = [[_copy_escaped(value) for value in column] for column in columns]
    for start in range(0, len(rows), COPY_PIECE_ROWS):
        piece = [column[start : start + COPY_PIECE_ROWS] for column in columns]
        yield ending.join(map("\t".join, zip(*piece, strict=True))) + ending


def _copy_plain(values: Sequence[str]) -> bool:
    """Whether none of the values holds a character COPY's text format reads as special."""
    text = "".join(values)
    return not any(special in text for special in _COPY_SPECIALS)


_COPY_SPECIALS = "\t\n\r\\"


def _copy_escaped(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(value: object) -> str:
    """A shared value in COPY's text format (the app's own values: no escaping needed)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"No COPY text for a {type(value).__name__}.")
