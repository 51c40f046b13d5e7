"""Least privilege: the staff flag alone opens nothing; each reach needs its own permission.

Every test performs the reach for real through Django's test client, then looks at the data.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from generator import services
from generator.models import Batch, User

pytestmark = pytest.mark.django_db


def staff_with(django_user_model: type[User], username: str, *codenames: str) -> Client:
    """A logged-in staff member holding just these permissions."""
    staff = django_user_model.objects.create_user(username, is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(staff)
    return client


def finished_batch_of(person: User, total: int = 50) -> Batch:
    batch = services.batch_create(requested_by=person, total=total)
    User.objects.bulk_create(
        User(username=f"user_{person.username}{index:06d}", batch=batch) for index in range(total)
    )
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.FINISHED, created_count=total)
    batch.refresh_from_db()
    return batch


def test_staff_alone_see_neither_other_peoples_accounts_nor_their_csv(
    django_user_model, generator_user
):
    batch = finished_batch_of(generator_user)
    staff = staff_with(django_user_model, "sam")

    listed = staff.get(reverse("generator:user_list"))
    assert listed.status_code == 200
    assert list(listed.context["page"].object_list) == []
    assert staff.get(reverse("generator:batch_users_csv", args=[batch.pk])).status_code == 404
    assert staff.get(batch.get_absolute_url()).status_code == 404
    assert list(staff.get(reverse("generator:batch_list")).context["page"].object_list) == []


def test_the_view_permissions_open_other_peoples_batches_and_accounts(
    django_user_model, generator_user
):
    batch = finished_batch_of(generator_user)
    reader = staff_with(django_user_model, "vera", "view_user", "view_batch")

    listed = reader.get(reverse("generator:user_list"))
    # Every account, Alice and Vera included, though neither is in a batch of Vera's.
    assert listed.context["page"].paginator.count == User.objects.count() == 52
    csv = reader.get(reverse("generator:batch_users_csv", args=[batch.pk]))
    assert csv.status_code == 200
    assert b"user_alice000000" in b"".join(csv.streaming_content)
    assert reader.get(batch.get_absolute_url()).status_code == 200


def test_an_admin_action_without_the_generate_permission_deletes_nobodys_users(
    django_user_model, generator_user
):
    batch = finished_batch_of(generator_user)
    # May change batches in the admin, but may not generate (nor so manage) batches.
    staff = staff_with(django_user_model, "sam", "view_batch", "change_batch")

    response = staff.post(
        reverse("admin:generator_batch_changelist"),
        {"action": "delete_batch_users", "_selected_action": [batch.pk]},
    )

    assert response.status_code in (200, 302)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 50
    for action in ("cancel_batches", "resume_batches"):
        staff.post(
            reverse("admin:generator_batch_changelist"),
            {"action": action, "_selected_action": [batch.pk]},
        )
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED


def test_the_admin_actions_work_for_those_who_may_manage_every_batch(
    django_user_model, generator_user
):
    batch = finished_batch_of(generator_user)
    manager = staff_with(django_user_model, "mona", "view_batch", "change_batch", "add_batch")

    manager.post(
        reverse("admin:generator_batch_changelist"),
        {"action": "delete_batch_users", "_selected_action": [batch.pk]},
    )

    batch.refresh_from_db()
    assert batch.status == Batch.Status.DELETING


def user_change_form(user: User, **changes: object) -> dict[str, object]:
    """What the admin's user form posts for `user`, with `changes` made."""
    form: dict[str, object] = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on",
        "is_staff": "on",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "initial-date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "initial-date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "last_login_0": "",
        "last_login_1": "",
        "batch": "",
    }
    form.update(changes)
    return form


def test_a_staff_member_who_may_change_users_cannot_make_themselves_superuser(
    django_user_model,
):
    client = staff_with(django_user_model, "eve", "view_user", "change_user")
    eve = User.objects.get(username="eve")
    every_permission = list(Permission.objects.values_list("pk", flat=True))

    response = client.post(
        reverse("admin:generator_user_change", args=[eve.pk]),
        user_change_form(eve, is_superuser="on", user_permissions=every_permission),
    )

    assert response.status_code == 302  # saved: the form went through, the grant did not
    eve.refresh_from_db()
    assert not eve.is_superuser
    assert set(eve.user_permissions.values_list("codename", flat=True)) == {
        "view_user",
        "change_user",
    }


def test_a_superuser_may_grant_what_staff_cannot(admin_client, django_user_model):
    eve = django_user_model.objects.create_user("eve", is_staff=True)

    response = admin_client.post(
        reverse("admin:generator_user_change", args=[eve.pk]),
        user_change_form(eve, is_superuser="on"),
    )

    assert response.status_code == 302
    eve.refresh_from_db()
    assert eve.is_superuser


def test_a_staff_member_who_may_change_users_cannot_touch_a_superusers_account(
    django_user_model, admin_user
):
    client = staff_with(django_user_model, "eve", "view_user", "change_user")

    password_form = reverse("admin:auth_user_password_change", args=[admin_user.pk])
    assert client.get(password_form).status_code == 403
    response = client.post(
        password_form,
        {
            "password1": "taken over 12345",
            "password2": "taken over 12345",
            "usable_password": "true",
        },
    )
    assert response.status_code == 403
    admin_user.refresh_from_db()
    assert not admin_user.check_password("taken over 12345")
