import random
import re
import threading

import pytest
from django.contrib.auth.hashers import check_password
from django.db import connection

from generator import services
from generator.models import Batch, User

USERNAME = re.compile(r"user_[A-Za-z]{10}")


def make_batch(total: int, password: str = "") -> Batch:
    return services.batch_create(requested_by=None, total=total, password=password)


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
    batch = make_batch(275)
    services.batch_generate_users(batch_id=batch.pk, chunk_size=100)
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
    taken = [services.random_username(rng) for _ in range(40)]
    User.objects.bulk_create([User(username=name) for name in taken])
    batch = make_batch(100)

    services.batch_generate_users(batch_id=batch.pk, chunk_size=50, rng=random.Random(7))

    batch.refresh_from_db()
    assert batch.created_count == 100
    assert User.objects.filter(batch=batch).count() == 100
    assert not User.objects.filter(batch=batch, username__in=taken).exists()
    assert User.objects.filter(username__in=taken, batch=None).count() == 40


@pytest.mark.django_db
def test_progress_is_reported_after_every_committed_chunk():
    batch = make_batch(250)
    seen: list[int] = []
    services.batch_generate_users(
        batch_id=batch.pk, chunk_size=100, on_progress=lambda b: seen.append(b.created_count)
    )
    assert seen == [100, 200, 250]


class Crash(Exception):
    pass


@pytest.mark.django_db
def test_a_rerun_after_a_crash_fills_only_what_is_missing():
    batch = make_batch(250)

    def crash_after_first_chunk(progress: Batch) -> None:
        raise Crash

    with pytest.raises(Crash):
        services.batch_generate_users(
            batch_id=batch.pk, chunk_size=100, on_progress=crash_after_first_chunk
        )
    batch.refresh_from_db()
    assert batch.created_count == 100
    assert batch.status == Batch.Status.RUNNING

    services.batch_generate_users(batch_id=batch.pk, chunk_size=100)

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
    batch = make_batch(3_000)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            services.batch_generate_users(batch_id=batch.pk, chunk_size=200)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert batch.created_count == 3_000
    assert User.objects.filter(batch=batch).count() == 3_000
