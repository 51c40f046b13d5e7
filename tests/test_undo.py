"""Undo: deleting a batch's users in the background, through the page, the admin and a real
worker, with its own progress; refused while the batch still creates users."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from rq import Queue

from generator import queueing, services, use_cases
from generator.models import Batch, User

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fast_settings"),
    # Several deletion chunks per batch.
    pytest.mark.with_settings(GENERATOR_CHUNK_SIZE=40),
]

CHANGELIST = reverse("admin:generator_batch_changelist")


def delete_url(batch: Batch) -> str:
    return reverse("generator:batch_delete_users", args=[batch.pk])


def status_of(client: Client, batch: Batch) -> dict[str, Any]:
    return client.get(reverse("generator:api_batch_detail", args=[batch.pk])).json()


def generated(requested_by: User | None, total: int) -> Batch:
    batch = services.batch_create(requested_by=requested_by, total=total)
    return services.batch_generate_users(batch_id=batch.pk)


def delete_button_shown(client: Client, batch: Batch) -> bool:
    """Whether the batch page shows its "Delete these users" form (it is there, hidden, for
    the page's script to show once the batch ends)."""
    page = client.get(batch.get_absolute_url()).content.decode()
    form = re.search(rf'<form [^>]*action="{re.escape(delete_url(batch))}"[^>]*>', page)
    assert form is not None
    return " hidden" not in form.group(0)


class WorkerDied(Exception):
    """A run stopped between two chunks, as a killed worker would stop it."""


def die(batch: Batch) -> None:
    raise WorkerDied


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_delete_from_the_page_through_a_real_worker_leaves_no_user_of_the_batch(
    generator_client: Client,
    generator_user: User,
    queue: Queue,
    run_worker: Callable[[], None],
) -> None:
    batch = generated(generator_user, 130)
    other = generated(generator_user, 50)
    assert delete_button_shown(generator_client, batch)

    confirmation = generator_client.get(delete_url(batch))
    assert confirmation.status_code == 200
    assert b"Yes, delete these users" in confirmation.content
    assert b"130 accounts" in confirmation.content
    assert User.objects.filter(batch=batch).count() == 130

    response = generator_client.post(delete_url(batch))

    assert response.status_code == 302
    assert response["Location"] == batch.get_absolute_url()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DELETING
    job = queue.fetch_job(queueing.batch_users_delete_job_id(batch.pk))
    assert job.func_name == "generator.jobs.batch_users_delete"
    assert job.args == [batch.pk]
    live = status_of(generator_client, batch)
    assert live["status"] == "deleting"
    assert live["done"] is False
    assert live["deleted"] == 0

    run_worker()

    assert not User.objects.filter(batch=batch).exists()
    assert User.objects.filter(batch=other).count() == 50
    assert User.objects.filter(pk=generator_user.pk).exists()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DELETED
    assert batch.deleted_count == 130
    assert batch.created_count == 130
    assert batch.deleted_at is not None
    final = status_of(generator_client, batch)
    assert (final["status"], final["done"], final["deleted"], final["deleted_percent"]) == (
        "deleted",
        True,
        130,
        100,
    )
    assert final["can_delete_users"] is False
    assert queue.fetch_job(queueing.batch_users_delete_job_id(batch.pk)).return_value() == {
        "batch_id": batch.pk,
        "status": "deleted",
        "deleted": 130,
    }
    page = generator_client.get(batch.get_absolute_url())
    assert b"130 users deleted." in page.content
    assert not delete_button_shown(generator_client, batch)


def test_delete_is_refused_while_the_batch_is_pending_or_running(
    generator_client: Client, generator_user: User, queue: Queue
) -> None:
    pending = services.batch_create(requested_by=generator_user, total=60)
    running = services.batch_create(requested_by=generator_user, total=60)
    Batch.objects.filter(pk=running.pk).update(status=Batch.Status.RUNNING)

    for batch in (pending, running):
        assert b"cancel it first" in generator_client.get(delete_url(batch)).content
        response = generator_client.post(delete_url(batch), follow=True)
        assert any("cancel it first" in message for message in messages_of(response))

    assert Batch.objects.get(pk=pending.pk).status == Batch.Status.PENDING
    assert Batch.objects.get(pk=running.pk).status == Batch.Status.RUNNING
    assert queue.count == 0


def test_a_cancelled_batch_can_have_the_users_it_made_deleted(
    generator_client: Client,
    generator_user: User,
    queue: Queue,
    run_worker: Callable[[], None],
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=120)
    # One chunk made, then cancelled: 40 of 120 kept.
    services.batch_generate_users(
        batch_id=batch.pk, on_progress=lambda b: services.batch_cancel(batch_id=b.pk)
    )
    batch.refresh_from_db()
    assert (batch.status, batch.created_count) == (Batch.Status.CANCELLED, 40)

    generator_client.post(delete_url(batch))
    run_worker()

    batch.refresh_from_db()
    assert batch.status == Batch.Status.DELETED
    assert batch.deleted_count == 40
    assert not User.objects.filter(batch=batch).exists()
    # Deleted is final: no resume refills it.
    assert use_cases.batch_resume(batch_id=batch.pk).status == Batch.Status.DELETED


def test_only_the_requester_with_permission_or_staff_may_delete(
    generator_client: Client,
    generator_user: User,
    reader_client: Client,
    admin_client: Client,
    queue: Queue,
) -> None:
    batch = generated(generator_user, 50)

    # Not visible to another person at all.
    assert reader_client.get(delete_url(batch)).status_code == 404
    assert reader_client.post(delete_url(batch)).status_code == 404
    # The requester who lost the permission to generate may look but not delete.
    generator_user.user_permissions.remove(Permission.objects.get(codename="add_batch"))
    assert generator_client.post(delete_url(batch)).status_code == 403
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert queue.count == 0

    assert admin_client.post(delete_url(batch)).status_code == 302
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.DELETING


def test_anonymous_visitor_cannot_delete(client: Client, generator_user: User) -> None:
    batch = generated(generator_user, 50)

    response = client.post(delete_url(batch))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.FINISHED


def test_staff_delete_from_the_admin_and_a_running_batch_is_refused(
    admin_client: Client, generator_user: User, queue: Queue, run_worker: Callable[[], None]
) -> None:
    finished = generated(generator_user, 90)
    pending = services.batch_create(requested_by=generator_user, total=60)

    response = admin_client.post(
        CHANGELIST,
        {"action": "delete_batch_users", "_selected_action": [finished.pk, pending.pk]},
        follow=True,
    )

    shown = messages_of(response)
    assert "Deleting the users of 1 batch(es)." in shown
    assert f"Still creating users, cancel them first: #{pending.pk}." in shown
    run_worker()
    finished.refresh_from_db()
    assert finished.status == Batch.Status.DELETED
    assert not User.objects.filter(batch=finished).exists()
    assert Batch.objects.get(pk=pending.pk).status == Batch.Status.PENDING


def test_asking_again_while_deleting_finishes_the_rest_with_exact_counts(
    admin_client: Client, generator_user: User, queue: Queue, run_worker: Callable[[], None]
) -> None:
    batch = generated(generator_user, 100)
    use_cases.batch_users_delete_submit(batch_id=batch.pk)
    # A first run deletes one chunk, then dies: the batch stays "deleting".
    with pytest.raises(WorkerDied):
        services.batch_users_delete(batch_id=batch.pk, on_progress=die)
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.DELETING
    assert User.objects.filter(batch=batch).count() == 60

    # Asked for again: a second job, under an id of its own, next to the first.
    admin_client.post(CHANGELIST, {"action": "delete_batch_users", "_selected_action": [batch.pk]})
    assert len(queue.job_ids) == 2
    assert queue.job_ids[0] == queueing.batch_users_delete_job_id(batch.pk)
    assert queue.job_ids[1].startswith(f"{queueing.batch_users_delete_job_id(batch.pk)}-")
    run_worker()

    batch.refresh_from_db()
    assert batch.status == Batch.Status.DELETED
    assert batch.deleted_count == 100
    assert not User.objects.filter(batch=batch).exists()


def test_asking_to_delete_a_deleted_batch_again_changes_nothing(
    generator_client: Client, generator_user: User, queue: Queue
) -> None:
    batch = generated(generator_user, 50)
    use_cases.batch_users_delete_submit(batch_id=batch.pk)
    services.batch_users_delete(batch_id=batch.pk)
    queue.empty()

    response = generator_client.post(delete_url(batch), follow=True)

    assert any("already deleted" in message for message in messages_of(response))
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DELETED
    assert batch.deleted_count == 50
    assert queue.count == 0


def test_the_admin_cannot_delete_a_batch_row_that_still_has_users(
    admin_client, generator_user, queue, run_worker
):
    # Deleting the row would orphan its users: "Delete the users" is the way, then the row.
    batch = use_cases.batch_submit(requested_by=generator_user, total=60)
    run_worker()
    changelist = reverse("admin:generator_batch_changelist")

    action_field = admin_client.get(changelist).context["action_form"].fields["action"]
    assert "delete_selected" not in [name for name, _ in action_field.choices]
    delete_url = reverse("admin:generator_batch_delete", args=[batch.pk])
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert Batch.objects.filter(pk=batch.pk).exists()
