"""Least privilege: the staff flag alone opens nothing; each reach needs its own permission.

Every test performs the reach for real through Django's test client, then looks at the data.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from generator import services
from generator.models import Batch, User

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_settings")]


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


def test_seeing_someone_elses_batch_does_not_open_its_accounts(django_user_model, generator_user):
    batch = finished_batch_of(generator_user)
    # May generate, and see every batch, but not read other people's accounts.
    bob = staff_with(django_user_model, "bob2", "add_batch", "view_batch")

    assert bob.get(batch.get_absolute_url()).status_code == 200
    listed = bob.get(reverse("generator:user_list"), {"batch": batch.pk})
    assert list(listed.context["page"].object_list) == []
    assert bob.get(reverse("generator:batch_users_csv", args=[batch.pk])).status_code == 404


def test_a_batch_changer_cannot_edit_the_fields_the_reconciler_relies_on(
    django_user_model, generator_user
):
    batch = finished_batch_of(generator_user)
    staff = staff_with(django_user_model, "sam", "view_batch", "change_batch")

    staff.post(
        reverse("admin:generator_batch_change", args=[batch.pk]),
        {"last_job_id": "planted", "last_enqueued_at_0": "2099-01-01", "last_enqueued_at_1": "0:0"},
    )

    batch.refresh_from_db()
    assert batch.last_job_id != "planted"
    assert batch.last_enqueued_at is None or batch.last_enqueued_at.year < 2099


def test_a_staff_member_who_may_change_groups_cannot_give_their_group_every_permission(
    django_user_model,
):
    helpers = Group.objects.create(name="helpers")
    client = staff_with(django_user_model, "gina", "view_group", "change_group")
    User.objects.get(username="gina").groups.add(helpers)

    response = client.post(
        reverse("admin:auth_group_change", args=[helpers.pk]),
        {"name": "helpers", "permissions": list(Permission.objects.values_list("pk", flat=True))},
    )

    assert response.status_code == 403
    assert not helpers.permissions.exists()


@pytest.mark.parametrize("privilege", ["staff", "group", "permission", "superuser"])
def test_a_staff_member_who_may_change_users_cannot_take_over_a_privileged_account(
    django_user_model, privilege
):
    client = staff_with(django_user_model, "eve", "view_user", "change_user", "delete_user")
    boss = django_user_model.objects.create_user(
        "boss", password="the boss's own password", is_staff=privilege == "staff"
    )
    if privilege == "group":
        boss.groups.add(Group.objects.create(name="managers"))
    elif privilege == "permission":
        boss.user_permissions.add(Permission.objects.get(codename="use_rq_dashboard"))
    elif privilege == "superuser":
        django_user_model.objects.filter(pk=boss.pk).update(is_superuser=True, is_staff=True)

    new_password = {"password1": "taken over 12345", "password2": "taken over 12345"}
    assert (
        client.post(
            reverse("admin:auth_user_password_change", args=[boss.pk]),
            {**new_password, "usable_password": "true"},
        ).status_code
        == 403
    )
    assert (
        client.post(
            reverse("admin:generator_user_delete", args=[boss.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    client.post(
        reverse("admin:generator_user_changelist"),
        {"action": "delete_selected", "_selected_action": [boss.pk], "post": "yes"},
    )

    boss.refresh_from_db()
    assert boss.check_password("the boss's own password")


def test_a_staff_member_who_may_change_users_still_manages_ordinary_accounts(django_user_model):
    client = staff_with(django_user_model, "eve", "view_user", "change_user")
    plain = django_user_model.objects.create_user("plain", password="the old password 1")

    response = client.post(
        reverse("admin:auth_user_password_change", args=[plain.pk]),
        {
            "password1": "a new password 123",
            "password2": "a new password 123",
            "usable_password": "true",
        },
    )

    assert response.status_code == 302
    plain.refresh_from_db()
    assert plain.check_password("a new password 123")
