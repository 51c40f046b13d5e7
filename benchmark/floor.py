"""The floors: the engine's plain ways in for the same rows, into a fresh copy of the user table.

The copy is made from the database's own catalogue, so it has every index and constraint the
migrations gave the real table (the foreign key to the batch included): on PostgreSQL
`CREATE TABLE ... (LIKE generator_user INCLUDING ALL)` plus the foreign keys LIKE leaves out, on
SQLite the table's and its indexes' SQL from sqlite_master under a new name. Each timed insert
goes into a copy made for it, in one transaction, commit included.
"""

from __future__ import annotations

import random
import re
import secrets
import string
import time
from typing import Any

from django.contrib.auth.hashers import UNUSABLE_PASSWORD_PREFIX
from django.db import connection, transaction
from django.utils import timezone

from generator.models import Batch, User

from . import BenchmarkError

FLOOR_TABLE = "bench_floor"
COLUMNS = (
    "password",
    "last_login",
    "is_superuser",
    "username",
    "first_name",
    "last_name",
    "email",
    "is_staff",
    "is_active",
    "date_joined",
    "batch_id",
)
EXECUTEMANY = "executemany"
COPY = "COPY"

FloorRow = tuple[Any, ...]


def floor_methods() -> tuple[str, ...]:
    """The ways in measured on this engine; the last one is the limit the app is held to."""
    return (EXECUTEMANY, COPY) if connection.vendor == "postgresql" else (EXECUTEMANY,)


def limit_method() -> str:
    return floor_methods()[-1]


class FloorRows:
    """N rows shaped as the app writes them, made once and inserted as often as asked.

    They name a finished batch of their own, made again whenever a reset of the app's tables
    took it away, so that the copy's foreign key is checked as the real table's is.
    """

    def __init__(self, users: int) -> None:
        self.users = users
        self.batch_pk = Batch.objects.create(total=users, status=Batch.Status.FINISHED).pk
        self.rows = floor_rows(users, batch_id=self.batch_pk)

    def insert(self, method: str) -> float:
        """Seconds for one transaction of `method` into a fresh copy of the user table."""
        Batch.objects.get_or_create(
            pk=self.batch_pk, defaults={"total": self.users, "status": Batch.Status.FINISHED}
        )
        qn = connection.ops.quote_name
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {qn(FLOOR_TABLE)}")
            for statement in floor_table_ddl():
                cursor.execute(statement)
        try:
            check_same_indexes()
            started = time.perf_counter()
            with transaction.atomic(), connection.cursor() as cursor:
                if method == COPY:
                    copy_rows(cursor, self.rows)
                else:
                    cursor.executemany(insert_sql(), self.rows)
            seconds = time.perf_counter() - started
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT COUNT(*) FROM {qn(FLOOR_TABLE)}")
                (count,) = cursor.fetchone()
            if count != self.users:
                raise BenchmarkError(f"The floor table holds {count} rows, not {self.users}.")
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {qn(FLOOR_TABLE)}")
        return seconds


def floor_rows(users: int, *, batch_id: int) -> list[FloorRow]:
    """`users` distinct rows in the order of COLUMNS: what the app writes for a plain account."""
    rng = random.Random()
    usernames: dict[str, None] = {}
    while len(usernames) < users:
        username = "user_" + "".join(rng.choices(string.ascii_letters, k=10))
        usernames[username] = None
    suffixes = secrets.token_hex(20 * users)
    # The same values the app writes, adapted the way Django adapts them for this backend.
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    return [
        (
            UNUSABLE_PASSWORD_PREFIX + suffixes[40 * index : 40 * index + 40],
            None,
            False,
            username,
            "",
            "",
            f"{username}@example.com",
            False,
            True,
            now,
            batch_id,
        )
        for index, username in enumerate(usernames)
    ]


def insert_sql() -> str:
    qn = connection.ops.quote_name
    return (
        f"INSERT INTO {qn(FLOOR_TABLE)} ({', '.join(qn(c) for c in COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(COLUMNS))})"
    )


def copy_rows(cursor: Any, rows: list[FloorRow]) -> None:
    """PostgreSQL's COPY FROM STDIN through psycopg's own cursor, row by row as the app does."""
    qn = connection.ops.quote_name
    columns = ", ".join(qn(c) for c in COLUMNS)
    with cursor.cursor.copy(f"COPY {qn(FLOOR_TABLE)} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def floor_table_ddl() -> list[str]:
    """CREATE statements for a copy of the user table with all its indexes and constraints."""
    qn = connection.ops.quote_name
    table = User._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            statements = [f"CREATE TABLE {qn(FLOOR_TABLE)} (LIKE {qn(table)} INCLUDING ALL)"]
            # LIKE copies every index and check but no foreign key.
            cursor.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname",
                [table],
            )
            statements += [
                f"ALTER TABLE {qn(FLOOR_TABLE)} ADD CONSTRAINT "
                f"{qn(f'{FLOOR_TABLE}_fk_{index}')} {definition}"
                for index, (definition,) in enumerate(cursor.fetchall())
            ]
            return statements
        cursor.execute(
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = %s AND sql IS NOT NULL "
            "ORDER BY type DESC, name",
            [table],
        )
        definitions = cursor.fetchall()
    statements = []
    patterns = {
        "table": re.compile(r"^CREATE TABLE\s+(\"[^\"]+\"|\S+)", re.IGNORECASE),
        "index": re.compile(r"^CREATE (UNIQUE )?INDEX\s+(\"[^\"]+\"|\S+)\s+ON\s+(\"[^\"]+\"|\S+)"),
    }
    for index, (kind, definition) in enumerate(definitions):
        pattern = patterns.get(kind)
        if pattern is None:
            raise BenchmarkError(f"Cannot copy the {kind} {definition!r} of {table}.")
        if kind == "table":
            renamed, replaced = pattern.subn(f"CREATE TABLE {qn(FLOOR_TABLE)}", definition)
        else:
            unique = (
                "UNIQUE " if pattern.match(definition) and definition[7:14] == "UNIQUE " else ""
            )
            name = qn(f"{FLOOR_TABLE}_{index}")
            renamed, replaced = pattern.subn(
                f"CREATE {unique}INDEX {name} ON {qn(FLOOR_TABLE)}", definition
            )
        if replaced != 1:
            raise BenchmarkError(f"Cannot copy the {kind} {definition!r}.")
        statements.append(renamed)
    return statements


def index_definitions(table: str) -> list[str]:
    """The table's indexes (unique constraints' and the primary key's included), names aside."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = %s::regclass",
                [table],
            )
            definitions = [row[0] for row in cursor.fetchall()]
            # "CREATE UNIQUE INDEX name ON public.table USING btree (username)" -> its shape.
            return sorted(
                re.sub(r"^CREATE (UNIQUE )?INDEX \S+ ON \S+", r"\1", d) for d in definitions
            )
        cursor.execute(f"PRAGMA index_list({connection.ops.quote_name(table)})")
        shapes = []
        for _, name, unique, origin, partial in cursor.fetchall():
            cursor.execute(f"PRAGMA index_info({connection.ops.quote_name(name)})")
            columns = ",".join(row[2] for row in cursor.fetchall())
            shapes.append(f"{unique}:{origin}:{partial}:{columns}")
        return sorted(shapes)


def check_same_indexes() -> None:
    """The copy must pay for every index the real table pays for, or the floor is too low."""
    real, copy = index_definitions(User._meta.db_table), index_definitions(FLOOR_TABLE)
    if real != copy:
        raise BenchmarkError(
            f"The floor table's indexes {copy} differ from the user table's {real}."
        )
