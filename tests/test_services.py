import random
import re
import string
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.hashers import check_password
from django.db import DatabaseError, OperationalError, connection
from django.utils import timezone

from generator import services
from generator.models import Batch, BatchChunk, User
from generator.services import accounts, chunks, retries

from .support import run_at_once

USERNAME = re.compile(r"user_[A-Za-z]{10}")


def make_batch(total: int, password: str = "", chunk_size: int | None = None) -> Batch:
    return services.batch_create(
        requested_by=None, total=total, password=password, chunk_size=chunk_size
    )


@pytest.mark.django_db
def test_batch_create_records_a_pending_batch_without_a_password():
    batch = make_batch(120)
    assert batch.status == Batch.Status.PENDING
    assert batch.created_count == 0
    assert batch.password_hash == ""


@pytest.mark.django_db
def test_batch_create_hashes_the_shared_password_once():
    batch = make_batch(50, password="correct horse battery staple")
    assert batch.password_hash.startswith("pbkdf2_sha256$")
    assert check_password("correct horse battery staple", batch.password_hash)


@pytest.mark.django_db
def test_generate_creates_exactly_total_users_shaped_like_the_tutorial():
    batch = make_batch(275, chunk_size=100)
    assert list(batch.chunks.values_list("size", flat=True)) == [100, 100, 75]
    services.batch_generate_users(batch_id=batch.pk)
    batch.refresh_from_db()
    users = list(User.objects.filter(batch=batch))
    assert batch.status == Batch.Status.FINISHED
    assert batch.created_count == 275
    assert len(users) == 275
    assert batch.finished_at is not None
    assert batch.started_at is not None
    for user in users:
        assert USERNAME.fullmatch(user.username)
        assert user.email == f"{user.username}@example.com"
        assert not user.has_usable_password()


@pytest.mark.django_db
def test_generated_accounts_share_the_one_password_hash():
    batch = make_batch(60, password="correct horse battery staple")
    services.batch_generate_users(batch_id=batch.pk)
    hashes = set(User.objects.filter(batch=batch).values_list("password", flat=True))
    assert hashes == {batch.password_hash}
    user = User.objects.filter(batch=batch).first()
    assert user.check_password("correct horse battery staple")


@pytest.mark.django_db
def test_username_collisions_are_skipped_and_the_batch_still_ends_with_total():
    # The same seed draws the same names: take the first ones before the batch does.
    rng = random.Random(7)
    taken = services.usernames_draw(rng, 40)
    User.objects.bulk_create([User(username=name) for name in taken])
    batch = make_batch(100, chunk_size=50)

    services.batch_generate_users(batch_id=batch.pk, rng=random.Random(7))

    batch.refresh_from_db()
    assert batch.created_count == 100
    assert User.objects.filter(batch=batch).count() == 100
    assert not User.objects.filter(batch=batch, username__in=taken).exists()
    assert User.objects.filter(username__in=taken, batch=None).count() == 40


@pytest.mark.django_db
def test_progress_is_reported_after_every_committed_chunk():
    batch = make_batch(250, chunk_size=100)
    seen: list[int] = []
    services.batch_generate_users(
        batch_id=batch.pk, on_progress=lambda b: seen.append(b.created_count)
    )
    assert seen == [100, 200, 250]


class Crash(Exception):
    pass


@pytest.mark.django_db
def test_a_rerun_after_a_crash_fills_only_what_is_missing():
    batch = make_batch(250, chunk_size=100)

    def crash_after_first_chunk(progress: Batch) -> None:
        raise Crash

    with pytest.raises(Crash):
        services.batch_generate_users(batch_id=batch.pk, on_progress=crash_after_first_chunk)
    batch.refresh_from_db()
    assert batch.created_count == 100
    assert batch.status == Batch.Status.RUNNING

    services.batch_generate_users(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 250


@pytest.mark.django_db
def test_a_finished_batch_is_left_alone():
    batch = make_batch(50)
    services.batch_generate_users(batch_id=batch.pk)
    services.batch_generate_users(batch_id=batch.pk)
    assert User.objects.filter(batch=batch).count() == 50


@pytest.mark.django_db
def test_batch_fail_records_the_reason_but_never_unfinishes_a_batch():
    failing, finished = make_batch(50), make_batch(50)
    services.batch_generate_users(batch_id=finished.pk)
    services.batch_fail(batch_id=failing.pk, reason="Something a person can read.")
    services.batch_fail(batch_id=finished.pk, reason="Too late.")
    failing.refresh_from_db()
    finished.refresh_from_db()
    assert failing.status == Batch.Status.FAILED
    assert failing.failure_reason == "Something a person can read."
    assert finished.status == Batch.Status.FINISHED
    assert finished.failure_reason == ""


@pytest.mark.django_db(transaction=True)
def test_two_runs_of_one_batch_at_once_make_exactly_total_users():
    batch = make_batch(3_000, chunk_size=200)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            services.batch_generate_users(batch_id=batch.pk)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    run_at_once(run, 2)

    assert errors == []
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert batch.created_count == 3_000
    assert User.objects.filter(batch=batch).count() == 3_000


@pytest.mark.django_db
def test_a_chunk_held_by_a_dead_run_is_taken_over_when_its_lease_runs_out(settings):
    batch = make_batch(300, chunk_size=100)
    claimed = chunks.chunk_claim(batch_id=batch.pk, lease=chunks.Lease(run_id="dead-run"))
    assert claimed.index == 0

    services.batch_generate_users(batch_id=batch.pk, run_id="live-run")
    batch.refresh_from_db()
    assert batch.created_count == 200  # the dead run's chunk is still leased
    assert batch.status == Batch.Status.RUNNING

    BatchChunk.objects.filter(pk=claimed.pk).update(lease_expires_at=timezone.now())
    services.batch_generate_users(batch_id=batch.pk, run_id="live-run")

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 300
    # The dead run, were it to wake up, finds its chunk taken and writes nothing.
    chunks.chunk_fill(chunk_id=claimed.pk, run_id="dead-run", rng=random.Random())
    assert User.objects.filter(batch=batch).count() == 300


@pytest.mark.django_db
def test_cancel_stops_between_chunks_and_keeps_what_was_made():
    batch = make_batch(500, chunk_size=100)

    def cancel_after_second_chunk(progress: Batch) -> None:
        if progress.created_count == 200:
            services.batch_cancel(batch_id=batch.pk)

    services.batch_generate_users(batch_id=batch.pk, on_progress=cancel_after_second_chunk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
    assert batch.created_count == 200
    assert User.objects.filter(batch=batch).count() == 200


def batch_failed_after_its_first_chunk() -> Batch:
    """A batch of 300 users in chunks of 100, failed once its first chunk is committed."""
    batch = make_batch(300, chunk_size=100)
    services.batch_generate_users(
        batch_id=batch.pk,
        on_progress=lambda progress: services.batch_fail(batch_id=batch.pk, reason="boom"),
    )
    return batch


@pytest.mark.django_db
def test_a_reopened_batch_finishes_exactly_what_is_missing():
    batch = batch_failed_after_its_first_chunk()
    batch.refresh_from_db()
    assert (batch.status, batch.created_count) == (Batch.Status.FAILED, 100)

    first_started_at = batch.started_at
    assert services.batch_reopen(batch_id=batch.pk).status == Batch.Status.PENDING
    services.batch_generate_users(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 300
    # Its figures cover the whole batch, the first run's part too.
    assert batch.started_at == first_started_at
    assert services.batch_reopen(batch_id=batch.pk).status == Batch.Status.FINISHED


@pytest.mark.django_db
def test_a_resumed_batch_leaves_its_pause_out_of_its_elapsed_time_rate_and_time_left():
    batch = batch_failed_after_its_first_chunk()
    # It failed an hour ago, after 10 s of work.
    failed_at = timezone.now() - timedelta(hours=1)
    started_at = failed_at - timedelta(seconds=10)
    Batch.objects.filter(pk=batch.pk).update(started_at=started_at, finished_at=failed_at)

    services.batch_reopen(batch_id=batch.pk)
    reopened = Batch.objects.get(pk=batch.pk)
    assert timedelta(hours=1) <= reopened.paused_for < timedelta(hours=1, minutes=1)
    services.batch_generate_users(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert batch.started_at == started_at
    assert batch.elapsed is not None
    assert timedelta(seconds=10) <= batch.elapsed < timedelta(minutes=1)
    assert batch.rate is not None
    assert batch.rate > 300 / 60


@pytest.mark.django_db
def test_a_batch_failed_before_it_started_has_no_pause_to_leave_out_once_resumed():
    batch = make_batch(100)
    services.batch_fail(batch_id=batch.pk, reason="boom")
    Batch.objects.filter(pk=batch.pk).update(finished_at=timezone.now() - timedelta(hours=1))

    services.batch_reopen(batch_id=batch.pk)
    services.batch_generate_users(batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.paused_for == timedelta(0)
    assert batch.elapsed is not None
    assert batch.elapsed < timedelta(minutes=1)


def test_the_raw_user_insert_sets_every_column_of_the_user_table():
    # A field added to User must be added to the insert too, or generated rows would lack it.
    columns = {field.column for field in User._meta.concrete_fields if not field.primary_key}
    assert set(services.USER_INSERT_COLUMNS) == columns


def test_drawn_usernames_are_shaped_like_the_tutorials_and_use_every_letter():
    usernames = services.usernames_draw(random.Random(3), 5_000)
    assert len(usernames) == 5_000
    assert all(re.fullmatch(r"user_[A-Za-z]{10}", name) for name in usernames)
    assert {letter for name in usernames for letter in name[5:]} == set(string.ascii_letters)


@pytest.mark.parametrize("realistic_names", [False, True])
def test_rows_come_in_username_order_each_with_its_own_email(realistic_names):
    # In username order, neighbouring inserts find their index pages in the cache.
    faker = accounts._faker() if realistic_names else None
    if faker is not None:
        faker.seed_instance(7)
    rows = accounts.user_rows_make(password_hash="", count=2_000, rng=random.Random(7), faker=faker)
    usernames = [username for username, *_ in rows]
    assert usernames == sorted(usernames)
    assert len(set(usernames)) == len(rows) > 1_990
    assert all(email == f"{username}@example.com" for username, email, *_ in rows)
    assert all(password.startswith("!") and len(password) == 41 for *_, password in rows)
    assert all(bool(first) == bool(last) == realistic_names for _, _, first, last, _ in rows)


def test_realistic_names_stay_with_the_username_they_were_drawn_beside():
    # What a seed reproduces: the i-th username drawn gets the i-th names drawn, whatever
    # order the rows are then written in.
    faker = accounts._faker()
    faker.seed_instance(7)
    rows = accounts.user_rows_make(password_hash="", count=2_000, rng=random.Random(7), faker=faker)
    faker.seed_instance(7)
    drawn = list(dict.fromkeys(accounts.usernames_draw(random.Random(7), 2_000)))
    first_names, last_names = accounts.names_draw(faker, len(drawn))

    written = list(zip(rows.usernames, rows.first_names, rows.last_names, strict=True))
    assert written == sorted(zip(drawn, first_names, last_names, strict=True))


@pytest.mark.django_db
def test_a_chunk_whose_holder_is_gone_is_taken_over_before_its_lease_runs_out():
    batch = make_batch(300, chunk_size=100)
    dead = chunks.Lease(run_id="dead-run", holder=("killed-worker", "job-1"))
    claimed = chunks.chunk_claim(batch_id=batch.pk, lease=dead)
    held = chunks.chunk_claim(
        batch_id=batch.pk, lease=chunks.Lease(run_id="live-run", holder=("live-worker", "job-2"))
    )
    asked = []

    def holders_gone(holders):
        asked.append(set(holders))
        return {holder for holder in holders if holder[0] == "killed-worker"}

    services.batch_generate_users(batch_id=batch.pk, run_id="taker", holders_gone=holders_gone)

    batch.refresh_from_db()
    assert batch.created_count == 200  # the dead run's chunk and the free one, not the live one
    assert BatchChunk.objects.get(pk=held.pk).lease_owner == "live-run"
    assert BatchChunk.objects.get(pk=claimed.pk).done
    assert asked[0] == {("killed-worker", "job-1"), ("live-worker", "job-2")}
    chunks.chunk_fill(chunk_id=claimed.pk, run_id="dead-run", rng=random.Random())
    assert User.objects.filter(batch=batch).count() == 200


@pytest.mark.django_db
def test_a_run_told_to_stop_gives_its_chunks_back_between_chunks():
    batch = make_batch(300, chunk_size=100)
    # A lease the run still holds when it is told to stop (as a retried claim can leave).
    BatchChunk.objects.filter(batch=batch, index=2).update(
        lease_owner="orphan", lease_expires_at=timezone.now() + timedelta(hours=1)
    )
    answers = iter([True, False])

    services.batch_generate_users(
        batch_id=batch.pk, run_id="orphan", keep_going=lambda: next(answers)
    )

    batch.refresh_from_db()
    assert batch.created_count == 100
    assert not BatchChunk.objects.filter(batch=batch, lease_owner="orphan").exists()
    assert BatchChunk.objects.get(batch=batch, index=2).lease_expires_at is None


@pytest.mark.django_db(transaction=True)
def test_a_database_out_of_reach_is_waited_for_and_a_wrong_query_is_not(settings):
    settings.GENERATOR_DATABASE_WAIT_SECONDS = 60
    tries = []

    def locked_twice() -> str:
        tries.append(1)
        if len(tries) < 3:
            with connection.cursor() as cursor:
                if connection.vendor == "sqlite":
                    raise OperationalError("database is locked")
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return "done"

    assert retries.database_errors_retrying(locked_twice) == "done"
    assert len(tries) == 3

    def wrong() -> None:
        tries.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    tries.clear()
    with pytest.raises(DatabaseError):
        retries.database_errors_retrying(wrong)
    assert len(tries) == 1


def _rows_ahead(monkeypatch: pytest.MonkeyPatch, *, ahead: bool) -> None:
    """The next chunk's rows made in a thread (as on PostgreSQL) or in line (as on SQLite),
    whatever the engine the suite runs on."""
    monkeypatch.setattr(chunks, "rows_made_ahead_help", lambda: ahead)


@pytest.mark.django_db
def test_a_lone_run_makes_each_next_chunks_rows_in_a_thread_once(
    monkeypatch: pytest.MonkeyPatch,
):
    _rows_ahead(monkeypatch, ahead=True)
    made_in: list[str] = []
    make = chunks.user_rows_make

    def recorded(**kwargs):
        made_in.append(threading.current_thread().name)
        return make(**kwargs)

    monkeypatch.setattr(chunks, "user_rows_make", recorded)
    # Four chunks of 50 and a smaller last one of 30.
    batch = make_batch(230, chunk_size=50)

    services.batch_generate_users(batch_id=batch.pk)

    assert User.objects.filter(batch=batch).count() == 230
    # The first chunk's rows in line, each next one's while the one before committed, and
    # none made twice, nor after the chunk that finished the batch.
    assert made_in[0] == threading.main_thread().name
    assert len(made_in) == 5
    assert all(name.startswith("rows-ahead") for name in made_in[1:])


@pytest.mark.django_db
@pytest.mark.parametrize("realistic_names", [False, True], ids=["plain", "realistic-names"])
def test_a_seeded_batch_makes_the_same_accounts_with_rows_made_ahead_or_in_line(
    monkeypatch: pytest.MonkeyPatch, realistic_names: bool
):
    def seeded_accounts(*, ahead: bool) -> list[tuple[str, str, str]]:
        _rows_ahead(monkeypatch, ahead=ahead)
        batch = services.batch_create(
            requested_by=None, total=230, chunk_size=50, realistic_names=realistic_names, seed=42
        )
        # Chunk 1 held by another live run: after chunk 0 the guess (chunk 1) is wrong once,
        # and chunk 1 is filled last, by a run of its own.
        BatchChunk.objects.filter(batch=batch, index=1).update(
            lease_owner="other-run", lease_expires_at=timezone.now() + timedelta(days=1)
        )
        services.batch_generate_users(batch_id=batch.pk)
        BatchChunk.objects.filter(batch=batch, index=1).update(lease_expires_at=timezone.now())
        services.batch_generate_users(batch_id=batch.pk)
        batch.refresh_from_db()
        assert batch.status == Batch.Status.FINISHED
        accounts = sorted(
            User.objects.filter(batch=batch).values_list("username", "first_name", "last_name")
        )
        # As fresh a database as before, for the same request again.
        User.objects.filter(batch=batch).delete()
        batch.delete()
        return accounts

    made_ahead = seeded_accounts(ahead=True)
    assert len(made_ahead) == 230
    assert all(first for _, first, _ in made_ahead) == realistic_names
    assert made_ahead == seeded_accounts(ahead=False)


@pytest.mark.django_db
def test_rows_whose_making_ahead_failed_are_made_in_line(monkeypatch: pytest.MonkeyPatch):
    _rows_ahead(monkeypatch, ahead=True)
    make = chunks.user_rows_make

    def failing_in_the_thread(**kwargs):
        if threading.current_thread() is not threading.main_thread():
            raise MemoryError("no room for the next chunk's rows")
        return make(**kwargs)

    monkeypatch.setattr(chunks, "user_rows_make", failing_in_the_thread)
    batch = make_batch(150, chunk_size=50)

    services.batch_generate_users(batch_id=batch.pk)

    batch.refresh_from_db()
    assert (batch.status, batch.created_count) == (Batch.Status.FINISHED, 150)
    assert User.objects.filter(batch=batch).count() == 150
