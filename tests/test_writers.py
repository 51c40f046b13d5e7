"""The raw user writers on the engine under test: COPY straight into the user table on
PostgreSQL, redone through a staging table only when a username is taken; executemany with the
shared values written once on SQLite; and SQLite connections sized for the username index."""

import random
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from generator import services
from generator.models import Batch, User
from generator.services import writers

SEED = 20261201
CHUNK_SIZE = 100
STAGING = writers.USER_STAGING_TABLE


def seeded_batch(total: int) -> Batch:
    return services.batch_create(requested_by=None, total=total, chunk_size=CHUNK_SIZE, seed=SEED)


def chunk_draws(index: int, *counts: int) -> list[list[str]]:
    """The usernames a seeded chunk draws, call by call (its first draw, then its top-ups)."""
    rng = random.Random(f"{SEED}:{index}")
    return [services.usernames_draw(rng, count) for count in counts]


def usernames_of(batch: Batch) -> set[str]:
    return set(User.objects.filter(batch=batch).values_list("username", flat=True))


def staging_inserts(queries: CaptureQueriesContext) -> list[str]:
    return [
        query["sql"]
        for query in queries.captured_queries
        if query["sql"].startswith("INSERT") and STAGING in query["sql"]
    ]


@pytest.mark.django_db
def test_chunks_whose_usernames_are_free_go_straight_into_the_user_table() -> None:
    batch = seeded_batch(250)

    with CaptureQueriesContext(connection) as queries:
        services.batch_generate_users(batch_id=batch.pk)

    batch.refresh_from_db()
    assert (batch.status, batch.created_count) == (Batch.Status.FINISHED, 250)
    expected = {
        name for index, size in enumerate([100, 100, 50]) for name in chunk_draws(index, size)[0]
    }
    assert usernames_of(batch) == expected
    assert not any(STAGING in query["sql"] for query in queries.captured_queries)


@pytest.mark.django_db
def test_a_taken_username_sends_only_its_chunk_the_slow_way_and_it_still_makes_its_size() -> None:
    first_draw, top_up = chunk_draws(0, CHUNK_SIZE, 1)
    taken = first_draw[37]
    person = User.objects.create(username=taken)
    batch = seeded_batch(2 * CHUNK_SIZE)

    with CaptureQueriesContext(connection) as queries:
        services.batch_generate_users(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.created_count == 2 * CHUNK_SIZE
    # The taken name is skipped and the chunk's own generator draws one more, as before.
    (second_chunk,) = chunk_draws(1, CHUNK_SIZE)
    assert usernames_of(batch) == (set(first_draw) - {taken}) | set(top_up) | set(second_chunk)
    person.refresh_from_db()
    assert person.batch is None
    if connection.vendor == "postgresql":
        # Once, for the first chunk's first COPY; its top-up and the second chunk were free.
        assert len(staging_inserts(queries)) == 1


@pytest.mark.django_db
def test_values_that_copy_would_misread_are_written_as_given() -> None:
    batch = services.batch_create(requested_by=None, total=3)
    joined = datetime(2026, 12, 1, 15, 4, 5, 123456, tzinfo=UTC)
    shared = writers.SharedValues(
        date_joined=joined,
        batch_id=batch.pk,
        last_login=None,
        is_superuser=False,
        is_staff=False,
        is_active=True,
    )
    odd_names = [
        ("Tab\there", "back\\slash"),
        ("new\nline", "carriage\rreturn"),
        ("O'Brien", "%s%%"),
    ]
    rows = [
        (f"user_odd{number}", f"user_odd{number}@example.com", first, last, "!unusable")
        for number, (first, last) in enumerate(odd_names)
    ]

    assert writers.user_rows_insert(columns_of(rows), shared) == 3

    written = User.objects.filter(batch=batch).order_by("username")
    assert [(user.first_name, user.last_name) for user in written] == odd_names
    for user in written:
        assert user.date_joined == joined
        assert user.last_login is None
        assert (user.is_superuser, user.is_staff, user.is_active) == (False, False, True)
        assert not user.has_usable_password()


@pytest.mark.django_db
def test_rows_whose_usernames_are_taken_are_skipped_by_the_writer() -> None:
    batch = services.batch_create(requested_by=None, total=2)
    User.objects.create(username="user_takenalrdy")
    shared = writers.SharedValues(
        date_joined=datetime.now(UTC),
        batch_id=batch.pk,
        last_login=None,
        is_superuser=False,
        is_staff=False,
        is_active=True,
    )
    rows = [
        (name, f"{name}@example.com", "", "", "!unusable")
        for name in ["user_freenamexx", "user_takenalrdy", "user_freenameyy"]
    ]

    assert writers.user_rows_insert(columns_of(rows), shared) == 2
    assert usernames_of(batch) == {"user_freenamexx", "user_freenameyy"}


def columns_of(rows: list[writers.UserRow]) -> writers.UserRows:
    return writers.UserRows(*(list(column) for column in zip(*rows, strict=True)))


def sqlite_pragmas(alias: str = "default", **settings_dict: object) -> dict[str, object]:
    """The pragmas of a connection of its own, opened as the worker's work horse opens one."""
    fresh = connections.create_connection(alias)
    fresh.settings_dict = {**fresh.settings_dict, **settings_dict}
    try:
        with fresh.cursor() as cursor:
            pragmas = {}
            for name in (
                "page_size",
                "cache_size",
                "temp_store",
                "wal_autocheckpoint",
                "journal_mode",
                "synchronous",
            ):
                cursor.execute(f"PRAGMA {name}")
                pragmas[name] = cursor.fetchone()[0]
    finally:
        fresh.close()
    return pragmas


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's connection settings")
@pytest.mark.django_db
def test_every_new_sqlite_connection_and_file_is_set_for_big_batches() -> None:
    # Negative: KiB, not pages. temp_store 2 is MEMORY; synchronous 1 is NORMAL.
    assert sqlite_pragmas() == {
        "page_size": settings.SQLITE_PAGE_BYTES,
        "cache_size": -settings.SQLITE_CACHE_KIB,
        "temp_store": 2,
        "wal_autocheckpoint": settings.SQLITE_WAL_CHECKPOINT_BYTES // settings.SQLITE_PAGE_BYTES,
        "journal_mode": "wal",
        "synchronous": 1,
    }
    # Room for the username index of a million users (~40 MB), and far fewer checkpoints than
    # SQLite's default of one per 1,000 pages.
    assert settings.SQLITE_CACHE_KIB >= 64 * 1024
    assert settings.SQLITE_WAL_CHECKPOINT_BYTES >= 100 * 1024 * 1024


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's connection settings")
@pytest.mark.django_db
def test_a_file_made_with_smaller_pages_keeps_them_and_checkpoints_every_as_many_bytes(
    tmp_path: Path,
) -> None:
    older = tmp_path / "older.sqlite3"
    with closing(sqlite3.connect(older)) as made_before:
        made_before.execute("PRAGMA page_size=4096")
        made_before.execute("CREATE TABLE t (x)")

    pragmas = sqlite_pragmas(NAME=str(older))

    assert pragmas["page_size"] == 4096
    assert pragmas["wal_autocheckpoint"] == settings.SQLITE_WAL_CHECKPOINT_BYTES // 4096


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's write-ahead log")
@pytest.mark.django_db(transaction=True)
def test_a_batch_on_sqlite_leaves_its_rows_in_the_database_file_not_only_in_the_log() -> None:
    batch = services.batch_create(requested_by=None, total=1_000, chunk_size=400)
    services.batch_generate_users(batch_id=batch.pk)

    # `immutable` reads the file alone, as if there were no write-ahead log beside it.
    file_alone = f"file:{connection.settings_dict['NAME']}?mode=ro&immutable=1"
    with closing(sqlite3.connect(file_alone, uri=True)) as database_file:
        (in_the_file,) = database_file.execute(
            f"SELECT count(*) FROM {User._meta.db_table} WHERE batch_id = ?", [batch.pk]
        ).fetchone()
    assert in_the_file == 1_000


def test_rows_whose_columns_differ_in_length_are_refused() -> None:
    # zip would silently drop the longer columns' last values.
    with pytest.raises(ValueError, match="as long as"):
        writers.UserRows(
            ["user_a", "user_b"], ["user_a@example.com"], ["", ""], ["", ""], ["!", "!"]
        )


def test_copy_text_keeps_every_row_whole_and_escapes_a_value_in_the_last_piece() -> None:
    # Three pieces, the special character only in the last one: every value of every piece
    # is escaped once one value needs it, and no row is split, lost or shifted between columns.
    count = 2 * writers.COPY_PIECE_ROWS + 1
    usernames = [f"user_{number:010d}" for number in range(count)]
    rows = writers.UserRows(
        usernames=usernames,
        emails=[f"{username}@example.com" for username in usernames],
        first_names=[f"first{number}" for number in range(count)],
        last_names=[""] * (count - 1) + ["tab\there"],
        passwords=["!unusable"] * count,
    )
    shared = writers.SharedValues(
        date_joined=datetime(2026, 12, 1, tzinfo=UTC),
        batch_id=7,
        last_login=None,
        is_superuser=False,
        is_staff=False,
        is_active=True,
    )

    pieces = list(writers._copy_text(rows, shared))

    assert len(pieces) == 3
    text = "".join(pieces)
    assert text.endswith("\n")
    lines = [line.split("\t") for line in text[:-1].split("\n")]
    assert len(lines) == count
    assert all(len(fields) == len(writers.USER_INSERT_COLUMNS) for fields in lines)
    assert [fields[:3] for fields in lines] == [list(row[:3]) for row in rows]
    assert lines[-1][3] == "tab\\there"
    assert lines[-1][5:] == ["2026-12-01T00:00:00+00:00", "7", "\\N", "f", "f", "t"]
