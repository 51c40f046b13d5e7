"""CSV export of a batch's accounts: exactly its accounts, never a password, streamed."""

from __future__ import annotations

import csv
import io
from typing import Any
from urllib.parse import quote

import pytest
from django.test import Client
from django.urls import reverse

from generator import services
from generator.models import Batch, User

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("fast_settings"),
    pytest.mark.with_settings(GENERATOR_CHUNK_SIZE=25),
]

SHARED_PASSWORD = "a long enough shared password"
HEADER = ["username", "email", "first_name", "last_name", "date_joined"]


def csv_url(batch: Batch) -> str:
    return reverse("generator:batch_users_csv", args=[batch.pk])


def generated(requested_by: User | None, total: int, **options: Any) -> Batch:
    batch = services.batch_create(requested_by=requested_by, total=total, **options)
    return services.batch_generate_users(batch_id=batch.pk)


def body_of(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


def test_csv_lists_exactly_the_accounts_of_the_batch(
    generator_client: Client, generator_user: User
) -> None:
    batch = generated(generator_user, 60, realistic_names=True, password=SHARED_PASSWORD)
    generated(generator_user, 30, realistic_names=True)

    response = generator_client.get(csv_url(batch))

    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(body_of(response))))
    assert rows[0] == HEADER
    expected = [
        [user.username, user.email, user.first_name, user.last_name, user.date_joined.isoformat()]
        for user in User.objects.filter(batch=batch).order_by("pk")
    ]
    assert rows[1:] == expected
    assert len(expected) == 60
    assert all(row[2] and row[3] for row in rows[1:])


def test_csv_has_no_password_column_and_no_hash_anywhere(
    generator_client: Client, generator_user: User
) -> None:
    batch = generated(generator_user, 40, password=SHARED_PASSWORD)
    users = User.objects.filter(batch=batch)
    hashes = set(users.values_list("password", flat=True))
    assert hashes == {batch.password_hash}

    body = body_of(generator_client.get(csv_url(batch)))

    assert "password" not in body.lower()
    assert batch.password_hash not in body
    _, salt, digest = batch.password_hash.split("$")
    assert salt not in body
    assert digest not in body
    assert SHARED_PASSWORD not in body


def test_csv_of_unusable_password_accounts_leaks_no_password_either(
    generator_client: Client, generator_user: User
) -> None:
    batch = generated(generator_user, 30)

    body = body_of(generator_client.get(csv_url(batch)))

    for password in User.objects.filter(batch=batch).values_list("password", flat=True):
        assert password not in body
    assert "!" not in body


def test_csv_is_a_streamed_attachment(generator_client: Client, generator_user: User) -> None:
    batch = generated(generator_user, 50)

    response = generator_client.get(csv_url(batch))

    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == (f'attachment; filename="batch-{batch.pk}-users.csv"')
    assert len(body_of(response).splitlines()) == 51


def test_csv_of_another_persons_batch_is_a_404(reader_client: Client, generator_user: User) -> None:
    batch = generated(generator_user, 50)

    assert reader_client.get(csv_url(batch)).status_code == 404
    assert reader_client.get(reverse("generator:batch_users_csv", args=[10**15])).status_code == 404


def test_staff_may_export_anyones_batch(admin_client: Client, generator_user: User) -> None:
    batch = generated(generator_user, 50)

    response = admin_client.get(csv_url(batch))

    assert response.status_code == 200
    assert len(body_of(response).splitlines()) == 51


def test_csv_of_an_anonymous_visitor_is_sent_to_the_login_page(
    client: Client, generator_user: User
) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)
    url = csv_url(batch)

    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={quote(url)}"


def test_csv_refuses_a_post(generator_client: Client, generator_user: User) -> None:
    batch = services.batch_create(requested_by=generator_user, total=50)

    assert generator_client.post(csv_url(batch)).status_code == 405


def test_batch_page_links_the_csv_once_the_batch_is_finished(
    generator_client: Client, generator_user: User
) -> None:
    pending = services.batch_create(requested_by=generator_user, total=50)
    finished = generated(generator_user, 50)

    assert csv_url(pending).encode() not in generator_client.get(pending.get_absolute_url()).content
    page = generator_client.get(finished.get_absolute_url())
    assert f'href="{csv_url(finished)}"'.encode() in page.content
    status = generator_client.get(reverse("generator:api_batch_detail", args=[finished.pk]))
    assert status.json()["csv_url"] == csv_url(finished)
