from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import django_rq
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import Client
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue

from generator.models import User

JSON_SERIALIZER = "rq.serializers.JSONSerializer"
# The Procfile's worker as a real process, in burst mode: it drains the queue, then exits.
BURST_WORKER = [
    sys.executable,
    "manage.py",
    "rqworker",
    "default",
    "--burst",
    "--serializer",
    JSON_SERIALIZER,
    "--worker-class",
    "generator.worker.BatchWorker",
]


@pytest.fixture(scope="session")
def redis_connection() -> Redis:
    """The tests' own Redis DB index. Missing Redis is an error, never a skip."""
    connection = django_rq.get_connection("default")
    try:
        connection.ping()
    except RedisConnectionError as exc:
        pytest.fail(
            f"Redis is not reachable at {settings.TEST_REDIS_URL} ({exc}). "
            "Run the tests through scripts/test, which starts one."
        )
    return connection


@pytest.fixture
def queue(redis_connection: Redis) -> Iterator[Queue]:
    """The app's queue on an empty Redis DB index."""
    redis_connection.flushdb()
    yield django_rq.get_queue("default")
    redis_connection.flushdb()


@pytest.fixture
def run_worker(queue: Queue) -> Callable[[], None]:
    """Drain the queue with a real RQ worker in burst mode (it forks a work horse per job)."""

    def run() -> None:
        # The work horse is a fork: it must not share this process's database connections.
        connections.close_all()
        worker = django_rq.get_worker("default", serializer=JSON_SERIALIZER)
        worker.work(burst=True)

    return run


@pytest.fixture
def generator_user(django_user_model: type[User]) -> User:
    """A person allowed to generate users (not staff)."""
    user = django_user_model.objects.create_user("alice", "alice@example.org", "unused")
    user.user_permissions.add(Permission.objects.get(codename="add_batch"))
    return user


@pytest.fixture
def reader_user(django_user_model: type[User]) -> User:
    """A logged-in person without the permission to generate."""
    return django_user_model.objects.create_user("bob", "bob@example.org", "unused")


@pytest.fixture
def generator_client(generator_user: User) -> Client:
    client = Client()
    client.force_login(generator_user)
    return client


@pytest.fixture
def reader_client(reader_user: User) -> Client:
    client = Client()
    client.force_login(reader_user)
    return client


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a real web or worker process that shares the test database and Redis."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database_url = f"sqlite:///{database['NAME']}"
    else:
        host, port = database["HOST"] or "localhost", database["PORT"] or 5432
        database_url = (
            f"postgres://{database['USER']}:{database['PASSWORD']}@{host}:{port}/{database['NAME']}"
        )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "site_config.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "tests-only-not-secret",
        "DJANGO_HTTPS": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.TEST_REDIS_URL,
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


phase_report_key = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the test, so a fixture can tell that its test failed."""
    report = yield
    item.stash.setdefault(phase_report_key, {})[report.when] = report
    return report
