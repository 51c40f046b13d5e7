"""The insert floor: the engine's plain way in for the same rows, into a copy of the user table."""

from __future__ import annotations

import re
import secrets
import string
import time

from django.db import connection, transaction
from django.db.models import Field, ForeignKey
from django.utils import timezone
from django.utils.crypto import get_random_string

from generator.models import Batch, User

from . import BenchmarkError

FLOOR_TABLE = "bench_floor"
COLUMNS = [
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
]


def insert_floor(users: int) -> float:
    """Seconds for one transaction of executemany into a table shaped like the user table."""
    batch = Batch.objects.create(total=users, status=Batch.Status.FINISHED)
    usernames: set[str] = set()
    while len(usernames) < users:
        usernames.add("user_" + get_random_string(10, string.ascii_letters))
    # The same values the app writes, adapted the way Django adapts them for this backend.
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    rows = [
        (
            "!" + secrets.token_hex(20),
            None,
            False,
            username,
            "",
            "",
            f"{username}@example.com",
            False,
            True,
            now,
            batch.pk,
        )
        for username in usernames
    ]
    qn = connection.ops.quote_name
    insert = (
        f"INSERT INTO {qn(FLOOR_TABLE)} ({', '.join(qn(c) for c in COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(COLUMNS))})"
    )
    with connection.cursor() as cursor:
        for statement in floor_table_ddl():
            cursor.execute(statement)
    try:
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(insert, rows)
        seconds = time.perf_counter() - started
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {qn(FLOOR_TABLE)}")
            (count,) = cursor.fetchone()
        if count != users:
            raise BenchmarkError(f"The floor table holds {count} rows, not {users}.")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {qn(FLOOR_TABLE)}")
        batch.delete()
    return seconds


def floor_table_ddl() -> list[str]:
    """CREATE statements for a table with the user table's columns, constraints and indexes."""
    qn = connection.ops.quote_name
    columns = []
    for model_field in User._meta.concrete_fields:
        definition = f"{qn(column_of(model_field))} {model_field.db_type(connection)}"
        definition += " NULL" if model_field.null else " NOT NULL"
        if model_field.primary_key:
            definition += " PRIMARY KEY"
        elif model_field.unique:
            definition += " UNIQUE"
        if suffix := model_field.db_type_suffix(connection):
            definition += f" {suffix}"
        if isinstance(model_field, ForeignKey):
            target = model_field.target_field
            definition += (
                f" REFERENCES {qn(target.model._meta.db_table)} ({qn(column_of(target))})"
                f"{connection.ops.deferrable_sql()}"
            )
        columns.append(definition)
    statements = [f"CREATE TABLE {qn(FLOOR_TABLE)} ({', '.join(columns)})"]
    # The secondary indexes as the migrations made them (on PostgreSQL that includes the
    # varchar_pattern_ops index for LIKE on username), copied from the database's catalogue.
    table = User._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                "WHERE indrelid = %s::regclass AND NOT indisunique AND NOT indisprimary",
                [table],
            )
        else:
            cursor.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = %s "
                "AND sql IS NOT NULL",
                [table],
            )
        definitions = [row[0] for row in cursor.fetchall()]
    pattern = re.compile(r"^CREATE INDEX (\S+) ON (\S+)", re.IGNORECASE)
    for index, definition in enumerate(definitions):
        renamed, replaced = pattern.subn(
            f"CREATE INDEX {qn(f'{FLOOR_TABLE}_{index}')} ON {qn(FLOOR_TABLE)}", definition
        )
        if replaced != 1:
            raise BenchmarkError(f"Cannot copy the index {definition!r}.")
        statements.append(renamed)
    return statements


def column_of(model_field: Field) -> str:
    """A concrete field's column (its type allows None, for fields that have none)."""
    if model_field.column is None:
        raise BenchmarkError(f"The field {model_field.name} has no column.")
    return model_field.column
