from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from redis import Redis

from generator import services
from generator.models import Batch, User

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_settings")]

GENERATE_URL = reverse("generator:generate")
BATCH_LIST_URL = reverse("generator:batch_list")
USER_LIST_URL = reverse("generator:user_list")


def batch_url(batch: Batch) -> str:
    return reverse("generator:batch_detail", args=[batch.pk])


def page_of(client: Client, url: str) -> str:
    """The page at `url`, which must answer 200."""
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def users_of(batch: Batch, count: int) -> list[User]:
    """Accounts as a worker would leave them: unusable passwords, tied to the batch."""
    return User.objects.bulk_create(
        User(username=f"user_{batch.pk}_{index}", password="!", batch=batch)
        for index in range(count)
    )


def listed_usernames(response: Any) -> list[str]:
    return [account.username for account in response.context["page"].object_list]


@pytest.mark.parametrize("path", ["/generate/", "/batches/", "/batches/{batch_id}/", "/users/"])
def test_anonymous_visitor_is_sent_to_the_login_page(
    client: Client, generator_user: User, path: str
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)
    url = path.format(batch_id=batch.pk)

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={quote(url)}"


def test_login_page_renders(client: Client) -> None:
    response = client.get(reverse("login"))

    assert response.status_code == 200
    assert b'name="username"' in response.content
    assert b'name="password"' in response.content


def test_healthz_answers_ok_without_login(client: Client) -> None:
    response = client.get(reverse("healthz"))

    assert response.status_code == 200
    assert response.content == b"ok"


def test_generate_form_renders_for_a_permitted_user(generator_client: Client) -> None:
    response = generator_client.get(GENERATE_URL)

    assert response.status_code == 200
    assert b'name="total"' in response.content
    assert b"From 50 to 500." in response.content


def test_generate_form_is_forbidden_without_permission(reader_client: Client) -> None:
    assert reader_client.get(GENERATE_URL).status_code == 403


def test_generate_post_is_forbidden_without_permission(reader_client: Client) -> None:
    response = reader_client.post(GENERATE_URL, {"total": "60"})

    assert response.status_code == 403
    assert Batch.objects.count() == 0


def test_generate_post_without_csrf_token_is_a_403_and_creates_nothing(
    generator_user: User,
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(generator_user)

    response = client.post(GENERATE_URL, {"total": "60"})

    assert response.status_code == 403
    assert Batch.objects.count() == 0


def test_generate_post_with_csrf_token_from_the_form_is_accepted(generator_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(generator_user)
    token = client.get(GENERATE_URL).context["csrf_token"]

    response = client.post(GENERATE_URL, {"total": "60", "csrfmiddlewaretoken": token})

    assert response.status_code == 302
    assert Batch.objects.count() == 1


def test_valid_generate_post_redirects_to_the_new_batch_page(
    generator_client: Client, generator_user: User
) -> None:
    response = generator_client.post(GENERATE_URL, {"total": "60"})

    batch = Batch.objects.get()
    assert response.status_code == 302
    assert response["Location"] == batch_url(batch)
    assert batch.requested_by == generator_user
    assert batch.total == 60
    page = generator_client.get(response["Location"])
    assert f"Batch #{batch.pk} requested: 60 users." in page.content.decode()


@pytest.mark.parametrize(
    ("total", "message"),
    [
        ("", "Say how many users to create."),
        ("abc", "Enter a whole number, like 100."),
        ("49", "Ensure this value is greater than or equal to 50."),
        ("501", "Ensure this value is less than or equal to 500."),
        ("9" * 5000, "Ensure this value is less than or equal to 500."),
        ("5\x000", "Enter a whole number, like 100."),
    ],
)
def test_invalid_generate_post_shows_the_form_error_and_creates_nothing(
    generator_client: Client, total: str, message: str
) -> None:
    response = generator_client.post(GENERATE_URL, {"total": total})

    assert response.status_code == 200
    assert response.context["form"].errors["total"] == [message]
    assert message in response.content.decode()
    assert Batch.objects.count() == 0


def test_generate_post_with_a_too_common_password_shows_the_error(
    generator_client: Client,
) -> None:
    response = generator_client.post(GENERATE_URL, {"total": "60", "password": "password"})

    assert response.status_code == 200
    assert "This password is too common." in response.content.decode()
    assert Batch.objects.count() == 0


def test_html_in_total_is_escaped_when_the_form_is_shown_again(generator_client: Client) -> None:
    response = generator_client.post(GENERATE_URL, {"total": "<script>alert(1)</script>"})

    assert response.status_code == 200
    assert b"<script>alert(1)</script>" not in response.content
    assert Batch.objects.count() == 0


def test_batch_list_shows_only_own_batches_to_non_staff(
    generator_client: Client, generator_user: User, reader_user: User
) -> None:
    own = services.batch_create(requested_by=generator_user, total=50)
    services.batch_create(requested_by=reader_user, total=60)

    response = generator_client.get(BATCH_LIST_URL)

    assert response.status_code == 200
    assert list(response.context["page"].object_list) == [own]


def test_batch_list_shows_every_batch_to_staff(
    admin_client: Client, generator_user: User, reader_user: User
) -> None:
    first = services.batch_create(requested_by=generator_user, total=50)
    second = services.batch_create(requested_by=reader_user, total=60)

    response = admin_client.get(BATCH_LIST_URL)

    assert response.status_code == 200
    assert list(response.context["page"].object_list) == [second, first]


def test_batch_page_of_another_users_batch_is_a_404(
    generator_client: Client, reader_user: User
) -> None:
    batch = services.batch_create(requested_by=reader_user, total=50)

    assert generator_client.get(batch_url(batch)).status_code == 404


def test_batch_page_of_an_id_beyond_any_integer_column_is_a_404(
    generator_client: Client,
) -> None:
    assert generator_client.get("/batches/99999999999999999999999/").status_code == 404


def test_batch_page_of_a_pending_batch_says_it_is_queued(
    generator_client: Client, generator_user: User
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)

    html = page_of(generator_client, batch_url(batch))

    assert f"Batch #{batch.pk}" in html
    assert "Queued" in html
    assert f'data-fragment-url="{batch_url(batch)}?fragment=progress"' in html


def test_batch_page_of_a_finished_batch_links_to_its_users(
    generator_client: Client, generator_user: User
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)
    now = timezone.now()
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.FINISHED,
        created_count=50,
        started_at=now - timedelta(seconds=2),
        finished_at=now,
    )

    html = page_of(generator_client, batch_url(batch))

    assert "50 users created in 2.00 s." in html
    assert f'href="/users/?batch={batch.pk}"' in html


def test_batch_page_of_a_failed_batch_shows_its_reason(
    generator_client: Client, generator_user: User
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)
    services.batch_fail(batch_id=batch.pk, reason="The job ran out of time.")

    html = page_of(generator_client, batch_url(batch))

    assert "This batch failed: The job ran out of time." in html
    assert "0 of 50 users were created." in html


def test_user_list_is_newest_first_and_paginated(
    generator_client: Client, generator_user: User, settings: Any
) -> None:
    settings.GENERATOR_PAGE_SIZE = 5
    batch = services.batch_create(requested_by=generator_user, total=50)
    users_of(batch, 12)
    newest_first = list(
        User.objects.filter(batch=batch).order_by("-id").values_list("username", flat=True)
    )

    first = generator_client.get(USER_LIST_URL)
    second = generator_client.get(USER_LIST_URL, {"page": "2"})
    last = generator_client.get(USER_LIST_URL, {"page": "3"})

    assert first.status_code == second.status_code == last.status_code == 200
    assert listed_usernames(first) == newest_first[:5]
    assert listed_usernames(second) == newest_first[5:10]
    assert listed_usernames(last) == newest_first[10:]
    assert "12 users, newest first." in first.content.decode()
    assert "Page 2 of 3" in second.content.decode()


@pytest.mark.parametrize("page", ["999", "abc", "0", "-1", "1.5"])
def test_user_list_with_a_bad_page_is_a_404(
    generator_client: Client, generator_user: User, settings: Any, page: str
) -> None:
    settings.GENERATOR_PAGE_SIZE = 5
    users_of(services.batch_create(requested_by=generator_user, total=50), 6)

    assert generator_client.get(USER_LIST_URL, {"page": page}).status_code == 404


def test_user_list_of_non_staff_shows_only_the_users_of_their_batches(
    generator_client: Client, generator_user: User, reader_user: User
) -> None:
    own = users_of(services.batch_create(requested_by=generator_user, total=50), 2)
    users_of(services.batch_create(requested_by=reader_user, total=50), 3)

    response = generator_client.get(USER_LIST_URL)

    assert sorted(listed_usernames(response)) == sorted(user.username for user in own)


def test_user_list_filtered_by_batch_shows_only_that_batchs_users(
    generator_client: Client, generator_user: User
) -> None:
    wanted = services.batch_create(requested_by=generator_user, total=50)
    other = services.batch_create(requested_by=generator_user, total=50)
    wanted_users = users_of(wanted, 3)
    users_of(other, 4)

    response = generator_client.get(USER_LIST_URL, {"batch": str(wanted.pk)})

    assert response.status_code == 200
    assert response.context["batch"] == wanted
    assert sorted(listed_usernames(response)) == sorted(user.username for user in wanted_users)


def test_user_list_page_links_keep_the_batch_filter(
    generator_client: Client, generator_user: User, settings: Any
) -> None:
    settings.GENERATOR_PAGE_SIZE = 5
    batch = services.batch_create(requested_by=generator_user, total=50)
    users_of(batch, 6)

    response = generator_client.get(USER_LIST_URL, {"batch": str(batch.pk)})

    assert f'href="?batch={batch.pk}&amp;page=2"' in response.content.decode()


@pytest.mark.parametrize("batch_id", ["abc", "999999", "-1", "1.0", "99999999999999999999999"])
def test_user_list_filtered_by_a_bad_or_unknown_batch_is_a_404(
    generator_client: Client, batch_id: str
) -> None:
    assert generator_client.get(USER_LIST_URL, {"batch": batch_id}).status_code == 404


def test_user_list_filtered_by_another_users_batch_is_a_404(
    generator_client: Client, reader_user: User
) -> None:
    batch = services.batch_create(requested_by=reader_user, total=50)
    users_of(batch, 2)

    response = generator_client.get(USER_LIST_URL, {"batch": str(batch.pk)})

    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/admin/generator/batch/",
        "/admin/generator/batch/{batch_id}/change/",
        "/admin/generator/user/",
        "/admin/generator/user/?batch__id__exact={batch_id}",
        "/django-rq/",
    ],
)
def test_superuser_can_open_the_admin_pages_and_the_queue_dashboard(
    admin_client: Client, generator_user: User, redis_connection: Redis, path: str
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)
    users_of(batch, 2)

    response = admin_client.get(path.format(batch_id=batch.pk))

    assert response.status_code == 200


def test_queue_dashboard_sends_non_staff_to_the_admin_login(generator_client: Client) -> None:
    response = generator_client.get("/django-rq/")

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db(transaction=True)
def test_a_double_submitted_form_makes_one_batch(generator_client, queue):
    form_page = generator_client.get(reverse("generator:generate"))
    key = form_page.context["form"]["idempotency_key"].value()
    first = generator_client.post(
        reverse("generator:generate"), {"total": "70", "idempotency_key": key}
    )
    second = generator_client.post(
        reverse("generator:generate"), {"total": "70", "idempotency_key": key}
    )
    assert first["Location"] == second["Location"]
    assert Batch.objects.count() == 1
    assert queue.count == 1


@pytest.mark.django_db(transaction=True)
def test_a_limit_reached_is_a_form_error_not_a_batch(settings, generator_client, queue):
    settings.GENERATOR_MAX_ACTIVE_BATCHES_PER_USER = 1
    generator_client.post(reverse("generator:generate"), {"total": "50"})
    response = generator_client.post(reverse("generator:generate"), {"total": "50"})
    assert response.status_code == 200
    assert "already have 1 batches waiting or running" in response.content.decode()
    assert Batch.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_posting_while_redis_is_down_queues_the_batch_for_later(settings, generator_client):
    settings.RQ_QUEUES = {
        "default": {**settings.RQ_QUEUES["default"], "URL": "redis://127.0.0.1:1/0"}
    }
    response = generator_client.post(reverse("generator:generate"), {"total": "50"}, follow=True)
    batch = Batch.objects.get()
    assert response.status_code == 200
    assert response.redirect_chain == [(batch.get_absolute_url(), 302)]
    page = response.content.decode()
    assert f"Batch #{batch.pk} requested: 50 users." in page
    assert "Queued: it will start as soon as a worker is free." in page
    assert batch.status == Batch.Status.PENDING


@pytest.mark.django_db(transaction=True)
def test_the_requester_cancels_and_resumes_a_batch_from_its_page(
    generator_client, generator_user, queue, run_worker
):
    batch = services.batch_create(requested_by=generator_user, total=300, chunk_size=100)
    services.batch_generate_users(
        batch_id=batch.pk,
        on_progress=lambda progress: services.batch_cancel(batch_id=batch.pk),
    )
    page = generator_client.get(batch.get_absolute_url()).content.decode()
    assert "Cancelled: 100 of 300 users were kept." in page
    assert "Resume batch" in page

    response = generator_client.post(reverse("generator:batch_resume", args=[batch.pk]))
    assert response.status_code == 302
    run_worker()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 300


@pytest.mark.django_db
def test_cancel_from_the_page_keeps_what_was_made(generator_client, generator_user):
    batch = services.batch_create(requested_by=generator_user, total=300)
    response = generator_client.post(
        reverse("generator:batch_cancel", args=[batch.pk]), follow=True
    )
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
    assert "Cancelled: 0 of 300 users were kept." in response.content.decode()


@pytest.mark.django_db
def test_only_the_requester_or_staff_may_cancel(reader_client, generator_user, admin_client):
    batch = services.batch_create(requested_by=generator_user, total=300)
    assert reader_client.post(reverse("generator:batch_cancel", args=[batch.pk])).status_code == 404
    assert reader_client.get(reverse("generator:batch_cancel", args=[batch.pk])).status_code == 405
    assert admin_client.post(reverse("generator:batch_cancel", args=[batch.pk])).status_code == 302
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_staff_cancel_and_resume_from_the_admin(admin_client, queue, run_worker):
    batch = services.batch_create(requested_by=None, total=120)
    changelist = reverse("admin:generator_batch_changelist")
    admin_client.post(changelist, {"action": "cancel_batches", "_selected_action": [batch.pk]})
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED

    admin_client.post(changelist, {"action": "resume_batches", "_selected_action": [batch.pk]})
    run_worker()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 120


def test_staff_without_the_generate_permission_cannot_manage_another_persons_batch(
    django_user_model, generator_user
):
    batch = services.batch_create(requested_by=generator_user, total=80)
    services.batch_cancel(batch_id=batch.pk)
    staff = django_user_model.objects.create_user("sam", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_batch"))
    client = Client()
    client.force_login(staff)

    assert client.get(batch.get_absolute_url()).status_code == 200  # may see every batch
    assert client.post(reverse("generator:batch_resume", args=[batch.pk])).status_code == 403
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED


def test_only_login_and_logout_of_django_auth_views_are_routed(client):
    assert client.get("/accounts/login/").status_code == 200
    assert client.get("/accounts/password_reset/").status_code == 404


def test_resuming_is_held_to_the_limit_on_active_batches(
    settings, generator_client, generator_user
):
    settings.GENERATOR_MAX_ACTIVE_BATCHES_PER_USER = 1
    stopped = services.batch_create(requested_by=generator_user, total=80)
    services.batch_cancel(batch_id=stopped.pk)
    services.batch_create(requested_by=generator_user, total=80)  # active, at the limit

    response = generator_client.post(
        reverse("generator:batch_resume", args=[stopped.pk]), follow=True
    )

    stopped.refresh_from_db()
    assert stopped.status == Batch.Status.CANCELLED
    assert "batches waiting or running" in response.content.decode()


def finished_batch(requested_by: User, **fields: Any) -> Batch:
    """A batch as the worker leaves it: 200,000 users made in 2 min 5 s."""
    finished_at = timezone.now()
    return Batch.objects.create(
        requested_by=requested_by,
        total=200_000,
        created_count=200_000,
        status=Batch.Status.FINISHED,
        started_at=finished_at - timedelta(minutes=2, seconds=5),
        finished_at=finished_at,
        **fields,
    )


def test_the_progress_fragment_is_the_batch_pages_section_alone(
    generator_client: Client, generator_user: User
) -> None:
    batch = finished_batch(generator_user)

    response = generator_client.get(batch_url(batch), {"fragment": "progress"})

    assert response.status_code == 200
    html = response.content.decode().strip()
    assert html.startswith('<section id="batch-progress"')
    assert html.endswith("</section>")
    assert 'data-done="true"' in html
    assert "200,000 users created in 2 min 5 s." in html
    assert "<html" not in html


def test_a_batch_being_worked_on_says_so_in_its_fragment(
    generator_client: Client, generator_user: User
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)

    html = generator_client.get(batch_url(batch), {"fragment": "progress"}).content.decode()

    assert 'data-done="false"' in html
    assert 'aria-busy="true"' in html
    assert "Queued: it will start as soon as a worker is free." in html


def test_the_progress_fragment_of_another_users_batch_is_a_404(
    generator_client: Client, reader_user: User
) -> None:
    batch = services.batch_create(requested_by=reader_user, total=50)

    assert generator_client.get(batch_url(batch), {"fragment": "progress"}).status_code == 404


def test_the_progress_fragment_sends_an_anonymous_visitor_to_the_login_page(
    client: Client, generator_user: User
) -> None:
    # The page's script stops polling on this redirect instead of swapping the login page in.
    batch = services.batch_create(requested_by=generator_user, total=50)

    response = client.get(batch_url(batch), {"fragment": "progress"})

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_polling_the_fragment_leaves_the_request_message_for_the_page(
    generator_client: Client,
) -> None:
    response = generator_client.post(GENERATE_URL, {"total": "60"})
    batch = Batch.objects.get()

    fragment = generator_client.get(response["Location"], {"fragment": "progress"})
    page = generator_client.get(response["Location"])

    assert "requested" not in fragment.content.decode()
    assert f"Batch #{batch.pk} requested: 60 users." in page.content.decode()


def test_the_request_message_shows_the_count_with_thousands_separators(
    generator_client: Client, settings: Any
) -> None:
    settings.GENERATOR_MAX_TOTAL = settings.GENERATOR_MAX_USERS_PER_DAY = 200_000

    response = generator_client.post(GENERATE_URL, {"total": "200000"}, follow=True)

    batch = Batch.objects.get()
    assert f"Batch #{batch.pk} requested: 200,000 users." in response.content.decode()


def test_the_batch_page_shows_counts_speed_and_duration_as_people_read_them(
    generator_client: Client, generator_user: User
) -> None:
    batch = finished_batch(generator_user)

    html = generator_client.get(batch_url(batch)).content.decode()

    assert "200,000 users asked by" in html
    assert '<span data-field="created">200,000</span> of 200,000 (100%)' in html
    assert "<dd>1,600 users/s</dd>" in html
    assert "<dd>2 min 5 s</dd>" in html
    assert "200,000 users created in 2 min 5 s." in html


def test_the_batch_list_shows_counts_and_durations_as_people_read_them(
    generator_client: Client, generator_user: User
) -> None:
    batch = finished_batch(generator_user)

    html = generator_client.get(BATCH_LIST_URL).content.decode()

    assert f'?batch={batch.pk}">200,000 of 200,000</a>' in html
    assert "<td>2 min 5 s</td>" in html


def test_the_users_list_counts_with_thousands_separators(
    generator_client: Client, generator_user: User, settings: Any
) -> None:
    settings.GENERATOR_PAGE_SIZE = 1
    users_of(services.batch_create(requested_by=generator_user, total=1_200), 1_200)

    html = generator_client.get(USER_LIST_URL, {"page": "1000"}).content.decode()

    assert "1,200 users, newest first." in html
    assert "Page 1,000 of 1,200" in html
    assert 'href="?page=1001"' in html


def test_ids_in_links_and_names_keep_no_thousands_separator(
    generator_client: Client, generator_user: User
) -> None:
    batch = finished_batch(generator_user, pk=12_345)
    users_of(batch, 1)

    batch_page = generator_client.get(batch_url(batch)).content.decode()
    user_page = generator_client.get(USER_LIST_URL).content.decode()

    assert "<h1>Batch #12345</h1>" in batch_page
    assert 'href="/users/?batch=12345"' in batch_page
    assert 'href="?batch=12345">#12345</a>' in user_page


def test_every_page_writes_dates_in_one_format(
    generator_client: Client, generator_user: User
) -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    batch = finished_batch(generator_user, created_at=moment)
    User.objects.filter(pk__in=[user.pk for user in users_of(batch, 1)]).update(date_joined=moment)
    shown = f'<time datetime="{moment.isoformat()}">2026-01-02 03:04:05 UTC</time>'

    for url in [
        batch_url(batch),
        BATCH_LIST_URL,
        USER_LIST_URL,
        reverse("generator:batch_delete_users", args=[batch.pk]),
    ]:
        assert shown in generator_client.get(url).content.decode(), url


def test_a_form_error_of_no_one_field_is_announced_and_tied_to_the_form(client: Client) -> None:
    response = client.post(reverse("login"), {"username": "nobody", "password": "wrong"})

    html = response.content.decode()
    assert '<form method="post" action="/accounts/login/" aria-describedby="form-errors">' in html
    assert '<div class="form-errors" id="form-errors" role="alert">' in html
    assert "<title>Error: Log in · Generator</title>" in html


def test_a_field_error_is_read_with_its_field(generator_client: Client) -> None:
    html = generator_client.post(GENERATE_URL, {"total": "1"}).content.decode()

    assert 'aria-invalid="true" aria-describedby="id_total_helptext id_total_error"' in html
    assert '<ul class="errorlist" id="id_total_error">' in html
    assert "<title>Error: Generate users · Generator</title>" in html
