from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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

from . import support

# BURST_WORKER is here too for the modules that still import it from conftest; new code takes
# it, like every helper, from tests.support.
from .support import BURST_WORKER, JSON_SERIALIZER, subprocess_env  # noqa: F401

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# The tiers, told apart by what a test touches: the system tier starts the app's real processes
# or a browser; the integration tier uses the database or Redis in this process; the rest are unit
# tests. `scripts/test --fast` leaves the system tier out.
SYSTEM_MARKERS = {"processes", "browser"}
INTEGRATION_FIXTURES = {"db", "transactional_db", "redis_connection"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier: `unit`, `integration` or `system`."""
    for item in items:
        marked = {marker.name for marker in item.iter_markers()}
        if marked & SYSTEM_MARKERS:
            item.add_marker(pytest.mark.system)
        elif "django_db" in marked or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def fast_settings(settings: Any) -> None:
    """Speed only, no behaviour under test: a module opts in with
    `pytest.mark.usefixtures("fast_settings")`.

    Each create_user would spend ~0.35 s in PBKDF2, and each new test Client would have WhiteNoise
    index every static file (~50 ms).
    """
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.WHITENOISE_AUTOREFRESH = True


@pytest.fixture(autouse=True)
def marked_settings(request: pytest.FixtureRequest) -> None:
    """The values of a `with_settings(NAME=value, ...)` marker, for its test or module.

    A test's own marker wins over its module's.
    """
    markers = list(request.node.iter_markers("with_settings"))
    if not markers:
        return
    overridden = request.getfixturevalue("settings")
    for marker in reversed(markers):
        for name, value in marker.kwargs.items():
            setattr(overridden, name, value)


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
def run_worker(queue: Queue) -> Callable[..., None]:
    """Drain the queues named (the batches' by default) with a real RQ worker in burst mode
    (it forks a work horse per job)."""

    def run(*queue_names: str) -> None:
        # The work horse is a fork: it must not share this process's database connections.
        connections.close_all()
        worker = django_rq.get_worker(*(queue_names or ["default"]), serializer=JSON_SERIALIZER)
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


phase_report_key = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the test, so a fixture can tell that its test failed."""
    report = yield
    item.stash.setdefault(phase_report_key, {})[report.when] = report
    return report


# The browser tests' fixtures: a module starts the Procfile's processes and one Chromium once,
# and gives each test a fresh browser context.


@pytest.fixture(scope="module")
def browser_platform(
    django_db_setup: None, redis_connection: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[support.Platform]:
    """Started once for the module: each test waits for the worker to be idle before it ends."""
    env = subprocess_env(PORT=str(support.free_port()), **support.BROWSER_PLATFORM_ENV)
    logs_dir = tmp_path_factory.mktemp("browser-platform")
    with support.browser_platform_running(redis_connection, logs_dir, env) as platform:
        yield platform


@pytest.fixture(scope="module")
def orm_beside_playwright() -> Iterator[None]:
    """Let the tests use the ORM while Playwright's sync API is active.

    Playwright's sync API keeps its asyncio loop marked as running in this thread, so Django
    would refuse every query as if it came from async code. Nothing async touches the ORM here.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def chromium(orm_beside_playwright: None) -> Iterator[Browser]:
    """Debian's Chromium (or CHROMIUM_PATH), never a browser downloaded by Playwright."""
    from playwright.sync_api import sync_playwright

    path = support.chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=support.CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(
    chromium: Browser, browser_platform: support.Platform, request: pytest.FixtureRequest
) -> Iterator[Page]:
    """A fresh browser context per test; a failed test leaves test-artifacts/<test name>.png."""
    context = chromium.new_context(base_url=browser_platform.base_url)
    context.set_default_timeout(30_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        reports = request.node.stash.get(phase_report_key, {})
        if any(report.failed for report in reports.values()):
            opened.screenshot(path=support.screenshot_path(request.node.name), full_page=True)
        context.close()
        # The database is emptied after each test: no job may still be writing to it.
        support.wait_for(browser_platform.worker_is_idle, "the worker is idle")


@pytest.fixture
def person(django_user_model: type[User]) -> User:
    """Someone allowed to generate users, with a password to type into the login form."""
    made = django_user_model.objects.create_user("dana", "dana@example.org", support.PASSWORD)
    made.user_permissions.add(Permission.objects.get(codename="add_batch"))
    return made


@pytest.fixture
def staff_client(django_user_model: type[User]) -> Client:
    """A staff member without the dashboard's permission."""
    user = django_user_model.objects.create_user("sam", "sam@example.org", "unused", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def dashboard_client(django_user_model: type[User]) -> Client:
    """A staff member with the dashboard's permission (not a superuser)."""
    user = django_user_model.objects.create_user("rue", "rue@example.org", "unused", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="use_rq_dashboard"))
    client = Client()
    client.force_login(user)
    return client
