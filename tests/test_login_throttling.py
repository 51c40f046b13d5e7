"""Login throttling with django-axes: guessing stops after a few tries, on both login pages."""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import Client
from django.urls import reverse

from generator.models import User

from .support import free_port, start_process, stop_process, subprocess_env, wait_until_up

pytestmark = pytest.mark.django_db
PASSWORD = "the right password, at last"
LOGIN_PAGES = ["login", "admin:login"]


class CountingHasher(PBKDF2PasswordHasher):
    """Django's own hasher, counting the passwords it hashes, to see which attempts it ran."""

    algorithm = "pbkdf2_sha256"
    calls = 0

    def encode(self, password: str, salt: str, iterations: int | None = None) -> str:
        CountingHasher.calls += 1
        return super().encode(password, salt, iterations)


@pytest.fixture
def person(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("carol", password=PASSWORD, is_staff=True)


def attempt(client: Client, page: str, password: str, username: str = "carol"):
    return client.post(reverse(page), {"username": username, "password": password})


@pytest.mark.usefixtures("fast_settings")
@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_after_five_wrong_passwords_even_the_right_one_is_refused(person, page):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt(client, page, "a wrong guess").status_code == 200  # the form again
    assert attempt(client, page, "a wrong guess").status_code == 429  # the fifth locks

    refused = attempt(client, page, PASSWORD)

    assert refused.status_code == 429
    assert "Too many failed logins" in refused.content.decode()
    assert "_auth_user_id" not in client.session


@pytest.mark.usefixtures("fast_settings")
def test_a_lockout_ends_after_the_cool_off(settings, person):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(client, "login", "a wrong guess")
    assert attempt(client, "login", PASSWORD).status_code == 429

    time.sleep(1.2)

    assert attempt(client, "login", PASSWORD).status_code == 302
    assert client.session["_auth_user_id"] == str(person.pk)


@pytest.mark.usefixtures("fast_settings")
def test_a_lockout_of_one_account_leaves_the_others_alone(person, django_user_model):
    django_user_model.objects.create_user("dave", password=PASSWORD)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(client, "login", "a wrong guess")

    assert attempt(client, "login", PASSWORD, username="dave").status_code == 302


def test_a_locked_out_attempt_is_refused_before_any_password_is_hashed(settings, person):
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(client, "login", "a wrong guess")
    hashed_before = CountingHasher.calls
    assert hashed_before >= settings.AXES_FAILURE_LIMIT  # the hasher really is in the path

    for _ in range(20):
        assert attempt(client, "login", "another guess").status_code == 429

    assert CountingHasher.calls == hashed_before


@pytest.fixture
def web(person: User, tmp_path: Path) -> Iterator[str]:
    """The Procfile's gunicorn (two workers), sharing the test database."""
    port = free_port()
    env = subprocess_env(PORT=str(port), WEB_CONCURRENCY="2")
    process = start_process("web", env, tmp_path / "web.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base_url}/healthz/", process)
        yield base_url
    finally:
        stop_process(process, signal.SIGTERM)


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_flood_of_parallel_wrong_logins_is_refused_without_stalling_the_site(web):
    with urllib.request.urlopen(f"{web}/accounts/login/", timeout=10) as response:
        cookie = response.headers["Set-Cookie"].split(";", 1)[0]
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode())

    def login(password: str) -> int:
        body = urllib.parse.urlencode(
            {"username": "carol", "password": password, "csrfmiddlewaretoken": token.group(1)}
        ).encode()
        request = urllib.request.Request(
            f"{web}/accounts/login/",
            data=body,
            headers={"Cookie": cookie, "Referer": f"{web}/accounts/login/"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:
        statuses = list(pool.map(login, [f"guess {n}" for n in range(40)]))
    flood_seconds = time.monotonic() - started

    # At most a few attempts per gunicorn worker get as far as hashing; the rest are refused.
    assert statuses.count(429) >= 30, statuses
    assert set(statuses) <= {200, 429}, statuses
    # Forty hashes at ~0.35 s on two workers took 15 s before the lockout existed.
    assert flood_seconds < 10, f"the flood took {flood_seconds:.1f} s"
    assert login(PASSWORD) == 429
    with urllib.request.urlopen(f"{web}/healthz/", timeout=5) as health:
        assert health.status == 200
