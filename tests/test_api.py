from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rq import Queue

from generator import services
from generator.models import Batch, User

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_settings")]

CREATE_URL = reverse("generator:api_batch_create")

WHOLE_NUMBER = "Enter a whole number, like 100."
REQUIRED = "Say how many users to create."
AT_LEAST_50 = "greater than or equal to 50"
AT_MOST_500 = "less than or equal to 500"


def detail_url(batch_id: int) -> str:
    return reverse("generator:api_batch_detail", args=[batch_id])


def post_json(client: Client, payload: Any, **extra: Any) -> Any:
    return client.post(CREATE_URL, json.dumps(payload), content_type="application/json", **extra)


BAD_TOTALS = [
    pytest.param("", REQUIRED, id="empty-string"),
    pytest.param(None, REQUIRED, id="null"),
    pytest.param("abc", WHOLE_NUMBER, id="letters"),
    pytest.param("-5", AT_LEAST_50, id="negative-string"),
    pytest.param(-5, AT_LEAST_50, id="negative-number"),
    pytest.param("0", AT_LEAST_50, id="zero-string"),
    pytest.param(0, AT_LEAST_50, id="zero-number"),
    pytest.param("49", AT_LEAST_50, id="one-below-min"),
    pytest.param(49, AT_LEAST_50, id="one-below-min-number"),
    pytest.param("501", AT_MOST_500, id="one-above-max"),
    pytest.param(501, AT_MOST_500, id="one-above-max-number"),
    pytest.param("50.5", WHOLE_NUMBER, id="decimal-string"),
    pytest.param(50.5, WHOLE_NUMBER, id="float"),
    pytest.param("50.0", WHOLE_NUMBER, id="decimal-zero-string"),
    pytest.param(50.0, WHOLE_NUMBER, id="float-with-zero-fraction"),
    pytest.param("1e3", WHOLE_NUMBER, id="exponent-string"),
    pytest.param(1e3, WHOLE_NUMBER, id="exponent-float"),
    pytest.param("1,000", WHOLE_NUMBER, id="thousands-separator"),
    pytest.param(" ", WHOLE_NUMBER, id="blank"),
    pytest.param("9" * 5000, AT_MOST_500, id="5000-digit-string"),
    pytest.param("99999999999999999999", AT_MOST_500, id="huge-string"),
    pytest.param(99999999999999999999, AT_MOST_500, id="huge-number"),
    pytest.param("<script>alert(1)</script>", WHOLE_NUMBER, id="html"),
    pytest.param("5\x000", WHOLE_NUMBER, id="nul-byte"),
    pytest.param(True, WHOLE_NUMBER, id="true"),
    pytest.param(False, WHOLE_NUMBER, id="false"),
    pytest.param({"value": 50}, WHOLE_NUMBER, id="object"),
    pytest.param([50], WHOLE_NUMBER, id="list"),
    pytest.param([], REQUIRED, id="empty-list"),
]


@pytest.mark.parametrize(("total", "message"), BAD_TOTALS)
def test_create_rejects_bad_total_with_400_and_a_field_error(
    generator_client: Client,
    queue: Queue,
    django_capture_on_commit_callbacks: Any,
    total: Any,
    message: str,
) -> None:
    # Run any on-commit callback for real, so "no job" is not just "no commit".
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_json(generator_client, {"total": total})

    assert response.status_code == 400
    body = response.json()
    assert body["error"]
    assert list(body["errors"]) == ["total"]
    assert message in body["errors"]["total"][0]["message"]
    assert Batch.objects.count() == 0
    assert callbacks == []
    assert queue.count == 0


def test_create_without_total_is_a_400_saying_it_is_required(generator_client: Client) -> None:
    response = post_json(generator_client, {})

    assert response.status_code == 400
    assert response.json()["errors"]["total"][0]["message"] == REQUIRED
    assert Batch.objects.count() == 0


def test_create_with_a_too_common_password_is_a_400_on_password(generator_client: Client) -> None:
    response = post_json(generator_client, {"total": 50, "password": "password"})

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["password"]
    assert Batch.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"total=50", id="form-encoded"),
        pytest.param(b'{"total": 50', id="truncated"),
        pytest.param(b"[50]", id="array"),
        pytest.param(b'"50"', id="string"),
        pytest.param(b"50", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"total": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param(b'{"total": ' + b"9" * 5000 + b"}", id="number-too-long-to-parse"),
    ],
)
def test_create_rejects_a_body_that_is_not_a_json_object_with_400(
    generator_client: Client, body: bytes
) -> None:
    response = generator_client.post(CREATE_URL, body, content_type="application/json")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert "JSON object" in response.json()["error"]
    assert Batch.objects.count() == 0


def test_create_when_anonymous_is_a_json_401(client: Client) -> None:
    response = post_json(client, {"total": 50})

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]
    assert Batch.objects.count() == 0


def test_detail_when_anonymous_is_a_json_401(client: Client, generator_user: User) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)

    response = client.get(detail_url(batch.pk))

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"


def test_create_without_permission_is_a_403_and_creates_nothing(reader_client: Client) -> None:
    response = post_json(reader_client, {"total": 50})

    assert response.status_code == 403
    assert response.json()["error"]
    assert Batch.objects.count() == 0


def test_create_without_csrf_token_is_a_403_and_creates_nothing(generator_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(generator_user)

    response = post_json(client, {"total": 50})

    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]
    assert Batch.objects.count() == 0


def test_create_with_csrf_cookie_and_header_is_accepted(generator_user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(generator_user)
    client.get(reverse("generator:generate"))
    token = client.cookies["csrftoken"].value

    response = post_json(client, {"total": 50}, headers={"X-CSRFToken": token})

    assert response.status_code == 202
    assert Batch.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_create_returns_202_with_the_batch_and_enqueues_its_job(
    generator_client: Client, generator_user: User, queue: Queue
) -> None:
    response = post_json(generator_client, {"total": 120})

    assert response.status_code == 202
    batch = Batch.objects.get()
    assert batch.requested_by == generator_user
    assert batch.total == 120
    assert response["Location"] == batch.get_absolute_url()
    body = response.json()
    assert body["id"] == batch.pk
    assert body["status"] == "pending"
    assert body["total"] == 120
    assert body["created"] == 0
    assert body["done"] is False
    job = queue.fetch_job(f"batch-{batch.pk}")
    assert job is not None
    assert job.args == [batch.pk]
    assert queue.job_ids == [f"batch-{batch.pk}"]


@pytest.mark.django_db(transaction=True)
def test_detail_shows_the_batch_finished_after_a_real_worker_ran(
    generator_client: Client, queue: Queue, run_worker: Callable[[], None]
) -> None:
    batch_id = post_json(generator_client, {"total": 50}).json()["id"]

    run_worker()
    response = generator_client.get(detail_url(batch_id))

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "finished"
    assert body["created"] == body["total"] == 50
    assert body["done"] is True
    assert body["percent"] == 100
    assert body["eta_seconds"] is None
    assert User.objects.filter(batch_id=batch_id).count() == 50


def test_detail_of_own_batch_is_its_status(generator_client: Client, generator_user: User) -> None:
    batch = services.batch_create(requested_by=generator_user, total=70)

    response = generator_client.get(detail_url(batch.pk))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == batch.pk
    assert body["status"] == "pending"
    assert body["total"] == 70
    assert body["created"] == 0
    assert body["percent"] == 0
    assert body["done"] is False
    assert body["requested_by"] == "alice"
    assert body["url"] == batch.get_absolute_url()
    assert body["users_url"] == f"/users/?batch={batch.pk}"


def test_detail_of_another_users_batch_is_a_json_404(
    generator_client: Client, reader_user: User
) -> None:
    batch = services.batch_create(requested_by=reader_user, total=50)

    response = generator_client.get(detail_url(batch.pk))

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]


def test_detail_of_any_batch_is_visible_to_staff(admin_client: Client, reader_user: User) -> None:
    batch = services.batch_create(requested_by=reader_user, total=50)

    response = admin_client.get(detail_url(batch.pk))

    assert response.status_code == 200
    assert response.json()["id"] == batch.pk


def test_detail_of_unknown_batch_is_a_json_404(generator_client: Client) -> None:
    response = generator_client.get(detail_url(999_999))

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"


def test_detail_of_an_id_beyond_any_integer_column_is_a_404_not_a_500(
    generator_client: Client,
) -> None:
    response = generator_client.get("/api/batches/99999999999999999999999/")

    assert response.status_code == 404
    assert response.json()["error"] == "No such batch."


def test_a_wrong_method_on_the_api_is_a_json_405(generator_client: Client) -> None:
    response = generator_client.delete(reverse("generator:api_batch_create"))

    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["error"] == "Use POST here."
