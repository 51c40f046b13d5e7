"""Realistic names and a seed: accepted and refused at the form, the API and the command line,
and a seeded batch made again, through real workers, with the same accounts."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rq import Queue

from generator import use_cases
from generator.forms import MAX_SEED, BatchForm
from generator.models import Batch, BatchChunk, User

from .support import burst_worker

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fast_settings"),
    # Several chunks per batch, so the seed is shown to hold across chunks and runs.
    pytest.mark.with_settings(GENERATOR_CHUNK_SIZE=40),
]

API_URL = reverse("generator:api_batch_create")
USERNAME = re.compile(r"user_[A-Za-z]{10}")
Account = tuple[str, str, str, str]


def accounts_of(batch: Batch) -> list[Account]:
    return sorted(
        User.objects.filter(batch=batch).values_list("username", "email", "first_name", "last_name")
    )


def post_json(client: Client, body: Any) -> Any:
    return client.post(API_URL, json.dumps(body), content_type="application/json")


def forget(batch: Batch) -> None:
    """Leave the database as fresh as before the batch: its accounts and its row gone."""
    User.objects.filter(batch=batch).delete()
    batch.delete()


@pytest.mark.processes
def test_a_seeded_realistic_batch_is_made_again_identically_on_a_fresh_database(
    generator_client: Client, queue: Queue, run_worker: Callable[[], None]
) -> None:
    response = post_json(generator_client, {"total": 100, "realistic_names": True, "seed": 42})
    assert response.status_code == 202
    first = Batch.objects.get(pk=response.json()["id"])
    assert first.chunks.count() == 3
    # A run that died holding chunk 0: later runs fill chunks 1 and 2 first, and chunk 0 is
    # filled last, by another job, once the lease has run out.
    BatchChunk.objects.filter(batch=first, index=0).update(
        lease_owner="dead-run", lease_expires_at=timezone.now() + timedelta(days=1)
    )
    run_worker()
    assert BatchChunk.objects.filter(batch=first, done=True).count() == 2
    BatchChunk.objects.filter(batch=first, index=0).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    use_cases.batch_enqueue(first.pk)
    run_worker()
    first.refresh_from_db()
    assert first.status == Batch.Status.FINISHED
    made_first = accounts_of(first)
    assert len(made_first) == 100
    for username, email, first_name, last_name in made_first:
        assert USERNAME.fullmatch(username)
        assert email == f"{username}@example.com"
        assert first_name.isalpha()
        assert first_name[0].isupper()
        assert last_name.replace("-", "").replace("'", "").isalpha()
    assert len({(row[2], row[3]) for row in made_first}) > 50

    forget(first)
    # The same request again, this time from the command line and through a worker that is a
    # process of its own (its own string hashing, its own everything), chunks in order.
    call_command("generate_users", "100", "--realistic-names", "--seed", "42", stdout=StringIO())
    second = Batch.objects.get()
    worker = burst_worker(PYTHONHASHSEED="12345")
    assert worker.returncode == 0, worker.stderr
    second.refresh_from_db()
    assert second.status == Batch.Status.FINISHED
    assert accounts_of(second) == made_first


def test_a_seed_repeated_on_the_same_database_makes_fresh_usernames(
    generator_client: Client, queue: Queue, run_worker: Callable[[], None]
) -> None:
    first = Batch.objects.get(pk=post_json(generator_client, {"total": 60, "seed": 7}).json()["id"])
    run_worker()
    second = Batch.objects.get(
        pk=post_json(generator_client, {"total": 60, "seed": 7}).json()["id"]
    )
    run_worker()

    first_names = {row[0] for row in accounts_of(first)}
    second_names = {row[0] for row in accounts_of(second)}
    assert len(first_names) == 60
    assert len(second_names) == 60
    assert not first_names & second_names
    second.refresh_from_db()
    assert second.created_count == 60


def test_batches_without_a_seed_differ_and_without_realistic_names_have_no_names(
    generator_client: Client, queue: Queue, run_worker: Callable[[], None]
) -> None:
    plain = Batch.objects.get(pk=post_json(generator_client, {"total": 50}).json()["id"])
    realistic = Batch.objects.get(
        pk=post_json(generator_client, {"total": 50, "realistic_names": True}).json()["id"]
    )
    run_worker()

    plain_accounts = accounts_of(plain)
    realistic_accounts = accounts_of(realistic)
    assert len(plain_accounts) == len(realistic_accounts) == 50
    assert all(row[2] == "" and row[3] == "" for row in plain_accounts)
    assert all(row[2] and row[3] for row in realistic_accounts)
    assert not {row[0] for row in plain_accounts} & {row[0] for row in realistic_accounts}
    assert plain.seed is None


@pytest.mark.parametrize(
    ("data", "realistic_names", "seed"),
    [
        ({}, False, None),
        ({"realistic_names": "on", "seed": "0"}, True, 0),
        ({"realistic_names": True, "seed": 42}, True, 42),
        ({"realistic_names": "false", "seed": ""}, False, None),
        ({"realistic_names": False, "seed": str(MAX_SEED)}, False, MAX_SEED),
    ],
)
def test_batch_form_accepts_the_options(data: dict[str, Any], realistic_names: bool, seed: Any):
    form = BatchForm(data={"total": "60", **data})

    assert form.is_valid(), form.errors
    assert form.cleaned_data["realistic_names"] is realistic_names
    assert form.cleaned_data["seed"] == seed


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"seed": "-1"}, "seed"),
        ({"seed": "1.5"}, "seed"),
        ({"seed": "1e3"}, "seed"),
        ({"seed": "seven"}, "seed"),
        ({"seed": 2.0}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": str(MAX_SEED + 1)}, "seed"),
        ({"seed": "9" * 5000}, "seed"),
        ({"realistic_names": "yes please"}, "realistic_names"),
        ({"realistic_names": 1}, "realistic_names"),
        ({"realistic_names": ["on"]}, "realistic_names"),
    ],
)
def test_batch_form_refuses_bad_options(data: dict[str, Any], field: str) -> None:
    form = BatchForm(data={"total": "60", **data})

    assert not form.is_valid()
    assert list(form.errors) == [field]


def test_api_records_the_options_and_shows_them_in_the_batch_json(
    generator_client: Client, queue: Queue
) -> None:
    response = post_json(generator_client, {"total": 60, "realistic_names": True, "seed": 9})

    assert response.status_code == 202
    body = response.json()
    assert body["realistic_names"] is True
    assert body["seed"] == 9
    batch = Batch.objects.get(pk=body["id"])
    assert (batch.realistic_names, batch.seed) == (True, 9)
    polled = generator_client.get(reverse("generator:api_batch_detail", args=[batch.pk])).json()
    assert (polled["realistic_names"], polled["seed"]) == (True, 9)


@pytest.mark.parametrize(
    "options", [{"seed": -5}, {"seed": "12abc"}, {"realistic_names": "sure"}, {"seed": 1.5}]
)
def test_api_refuses_bad_options_and_creates_nothing(
    generator_client: Client, queue: Queue, options: dict[str, Any]
) -> None:
    response = post_json(generator_client, {"total": 60, **options})

    assert response.status_code == 400
    assert set(response.json()["errors"]) == set(options)
    assert not Batch.objects.exists()
    assert queue.count == 0


def test_generate_form_offers_the_options_and_records_them(
    generator_client: Client, queue: Queue
) -> None:
    page = generator_client.get(reverse("generator:generate"))
    assert b'name="realistic_names"' in page.content
    assert b'name="seed"' in page.content

    response = generator_client.post(
        reverse("generator:generate"), {"total": "70", "realistic_names": "on", "seed": "123"}
    )

    batch = Batch.objects.get()
    assert response.status_code == 302
    assert (batch.realistic_names, batch.seed) == (True, 123)
    detail = generator_client.get(batch.get_absolute_url())
    assert b"Names: realistic. Seed: 123." in detail.content


def test_generate_form_shows_a_bad_seed_as_a_form_error(
    generator_client: Client, queue: Queue
) -> None:
    response = generator_client.post(reverse("generator:generate"), {"total": "70", "seed": "-1"})

    assert response.status_code == 200
    assert b"greater than or equal to 0" in response.content
    assert not Batch.objects.exists()


def test_command_line_records_the_options(queue: Queue) -> None:
    out = StringIO()
    call_command("generate_users", "75", "--realistic-names", "--seed", "31337", stdout=out)

    batch = Batch.objects.get()
    assert out.getvalue().strip() == str(batch.pk)
    assert (batch.realistic_names, batch.seed) == (True, 31337)


@pytest.mark.parametrize("seed", ["-1", "0.5", "many", str(MAX_SEED + 1)])
def test_command_line_refuses_a_bad_seed_and_creates_nothing(queue: Queue, seed: str) -> None:
    with pytest.raises(CommandError, match="seed"):
        call_command("generate_users", "75", "--seed", seed, stdout=StringIO())

    assert not Batch.objects.exists()
    assert queue.count == 0


def test_admin_shows_the_options_of_a_batch(admin_client: Client, queue: Queue) -> None:
    call_command("generate_users", "75", "--realistic-names", "--seed", "4242", stdout=StringIO())
    batch = Batch.objects.get()

    response = admin_client.get(reverse("admin:generator_batch_change", args=[batch.pk]))

    assert response.status_code == 200
    assert b"4242" in response.content
    assert b"Realistic names" in response.content
