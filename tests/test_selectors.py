"""Reads: who sees and manages which batches and accounts, and the export's rows."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from generator import selectors
from generator.models import Batch, User

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_settings")]


def person_with(django_user_model: type[User], username: str, *codenames: str) -> User:
    person = django_user_model.objects.create_user(username, f"{username}@example.org", "unused")
    person.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    # A fresh instance: Django caches a user's permissions on first use.
    return django_user_model.objects.get(pk=person.pk)


def batch_with_users(requested_by: User | None, count: int = 3) -> Batch:
    batch = Batch.objects.create(
        requested_by=requested_by, total=count, created_count=count, status=Batch.Status.FINISHED
    )
    owner = requested_by.username if requested_by else "nobody"
    User.objects.bulk_create(
        User(username=f"user_{owner}_{batch.pk}_{index}", email=f"{index}@example.com", batch=batch)
        for index in range(count)
    )
    return batch


@pytest.fixture
def alice(django_user_model) -> User:
    return person_with(django_user_model, "alice", "add_batch")


@pytest.fixture
def carol(django_user_model) -> User:
    return person_with(django_user_model, "carol", "add_batch")


def test_a_person_sees_only_the_batches_they_asked_for(alice, carol):
    mine = batch_with_users(alice)
    batch_with_users(carol)
    batch_with_users(None)
    assert list(selectors.batches_visible_to(alice)) == [mine]


def test_the_view_permission_shows_every_batch(django_user_model, alice):
    viewer = person_with(django_user_model, "victor", "view_batch")
    batches = [batch_with_users(alice), batch_with_users(None)]
    assert set(selectors.batches_visible_to(viewer)) == set(batches)


def test_a_person_sees_the_accounts_of_their_own_batches_newest_first(alice, carol):
    mine = batch_with_users(alice)
    batch_with_users(carol)
    visible = list(selectors.users_visible_to(alice))
    assert visible == list(User.objects.filter(batch=mine).order_by("-id"))


def test_the_user_view_permission_shows_every_account(django_user_model, alice):
    viewer = person_with(django_user_model, "victor", "view_user")
    batch_with_users(alice)
    batch_with_users(None)
    assert selectors.users_visible_to(viewer).count() == User.objects.count()


def test_users_of_one_batch_are_that_batchs_only(alice):
    batch = batch_with_users(alice, count=4)
    batch_with_users(alice)
    assert set(selectors.users_visible_to(alice, batch=batch)) == set(batch.users.all())


def test_a_person_manages_their_own_batches_only(alice, carol):
    mine, theirs = batch_with_users(alice), batch_with_users(carol)
    assert selectors.can_manage(alice, mine)
    assert not selectors.can_manage(alice, theirs)
    assert not selectors.can_manage_any(alice)


def test_managing_anyones_batch_takes_both_generating_and_changing_batches(
    django_user_model, carol
):
    theirs = batch_with_users(carol)
    manager = person_with(django_user_model, "mona", "add_batch", "change_batch")
    changer_only = person_with(django_user_model, "chad", "change_batch")
    assert selectors.can_manage(manager, theirs)
    assert selectors.can_manage_any(manager)
    assert not selectors.can_manage(changer_only, theirs)
    assert not selectors.can_manage_any(changer_only)


def test_without_the_permission_to_generate_no_batch_is_managed(django_user_model):
    reader = person_with(django_user_model, "bob")
    own = batch_with_users(reader)
    assert not selectors.can_manage(reader, own)


def test_export_rows_are_the_batchs_accounts_in_order_without_passwords(alice):
    batch = batch_with_users(alice, count=5)
    batch_with_users(alice)
    rows = list(selectors.batch_users_export_rows(batch, chunk_size=2))
    users = User.objects.filter(batch=batch).order_by("pk")
    assert [row[0] for row in rows] == [user.username for user in users]
    assert all(len(row) == len(selectors.EXPORT_COLUMNS) for row in rows)
    assert "password" not in selectors.EXPORT_COLUMNS
    assert rows[0][4] == users[0].date_joined.isoformat()
