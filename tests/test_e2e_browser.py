"""What a person sees in a real browser: Chromium driving the Procfile's gunicorn and rqworker."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from playwright.sync_api import Browser, Page, expect, sync_playwright
from redis import Redis
from rq import Worker

from generator.models import Batch, User

from .conftest import phase_report_key, subprocess_env
from .test_processes import free_port, procfile, wait_until_up

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a long enough test password"
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
# Small chunks make many commits, so a big batch runs long enough to be watched and cancelled.
CHUNK_SIZE = 50
MAX_TOTAL = 100_000
MIN_TOTAL = 50
PAGE_SIZE = 50
USERNAME = re.compile(r"user_[A-Za-z]{10}")
BATCH_URL = re.compile(r"/batches/(\d+)/$")
DEADLINE_SECONDS = 90


@dataclass
class Platform:
    """The app served for real: gunicorn and rqworker, as the Procfile starts them."""

    base_url: str
    web: subprocess.Popen
    worker: subprocess.Popen
    redis: Redis

    @contextmanager
    def worker_paused(self) -> Iterator[None]:
        """Freeze the worker (and its work horse) with SIGSTOP, so the page is seen first."""
        os.killpg(self.worker.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.worker.pid, signal.SIGCONT)

    def worker_is_idle(self) -> bool:
        workers = Worker.all(connection=self.redis)
        return bool(workers) and all(worker.get_state() == "idle" for worker in workers)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def platform(
    django_db_setup: None, redis_connection: Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """Started once for the module: each test waits for the worker to be idle before it ends."""
    redis_connection.flushdb()
    logs_dir = tmp_path_factory.mktemp("browser-platform")
    port = free_port()
    env = subprocess_env(
        PORT=str(port),
        WEB_CONCURRENCY="2",
        GENERATOR_CHUNK_SIZE=str(CHUNK_SIZE),
        GENERATOR_MIN_TOTAL=str(MIN_TOTAL),
        GENERATOR_MAX_TOTAL=str(MAX_TOTAL),
        GENERATOR_PAGE_SIZE=str(PAGE_SIZE),
        GENERATOR_FANOUT_THRESHOLD=str(10 * MAX_TOTAL),
        GENERATOR_MAX_USERS_PER_DAY=str(100 * MAX_TOTAL),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    # Only this process runs Playwright's event loop: the app must keep Django's guard.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    commands = procfile()
    run = {"cwd": settings.BASE_DIR, "env": env}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], check=True, **run
    )
    subprocess.run(["bash", "-c", commands["release"]], check=True, capture_output=True, **run)
    logs = {name: (logs_dir / f"{name}.log").open("w") for name in ("web", "worker")}
    web, worker = (
        subprocess.Popen(
            ["bash", "-c", f"exec {commands[name]}"],
            stdout=logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run,
        )
        for name in ("web", "worker")
    )
    started = Platform(f"http://127.0.0.1:{port}", web, worker, redis_connection)
    try:
        wait_until_up(f"{started.base_url}/healthz/", web)
        wait_for(started.worker_is_idle, "the worker is ready", timeout=30)
        yield started
    finally:
        for process in (web, worker):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for name, log in logs.items():
            log.close()
            print(f"--- {name} log ---\n{(logs_dir / f'{name}.log').read_text()}")
        redis_connection.flushdb()


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
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"No Chromium at {path}. Install it (apt install chromium) or set CHROMIUM_PATH; "
            "scripts/test does both."
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


@pytest.fixture
def page(chromium: Browser, platform: Platform, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser context per test; a failed test leaves test-artifacts/<test name>.png."""
    context = chromium.new_context(base_url=platform.base_url)
    context.set_default_timeout(30_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        reports = request.node.stash.get(phase_report_key, {})
        if any(report.failed for report in reports.values()):
            opened.screenshot(path=screenshot_path(request.node.name), full_page=True)
        context.close()
        # The database is emptied after each test: no job may still be writing to it.
        wait_for(platform.worker_is_idle, "the worker is idle")


@pytest.fixture
def person(django_user_model: type[User]) -> User:
    """Someone allowed to generate users, with a password to type into the login form."""
    made = django_user_model.objects.create_user("dana", "dana@example.org", PASSWORD)
    made.user_permissions.add(Permission.objects.get(codename="add_batch"))
    return made


def log_in(page: Page, person: User) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def submit_batch(page: Page, total: int) -> int:
    """Ask for `total` users through the form; return the id of the batch page it lands on."""
    page.goto("/generate/")
    page.get_by_label("How many users").fill(str(total))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(BATCH_URL)
    return int(BATCH_URL.search(page.url).group(1))


def bar_value(page: Page) -> int:
    return page.locator('progress[data-field="bar"]').evaluate("bar => bar.value")


def outcome(page: Page) -> str:
    return page.locator('[data-field="outcome"]').inner_text().strip()


def test_a_batch_from_the_form_fills_its_progress_bar_live_without_a_reload(
    page: Page, person: User, platform: Platform
) -> None:
    log_in(page, person)
    # Paused, the worker cannot finish before the page is drawn: it must draw the progress live.
    with platform.worker_paused():
        batch_id = submit_batch(page, 500)
        assert page.locator("#batch-progress").get_attribute("data-done") == "false"
        assert bar_value(page) == 0
        page.evaluate("window.__marker = 'never reloaded'")

    expect(page.locator('[data-field="outcome"]')).to_contain_text(
        re.compile(r"500 users created in \d+\.\d\d s\."), timeout=DEADLINE_SECONDS * 1000
    )
    assert bar_value(page) == 500
    assert page.locator('progress[data-field="bar"]').get_attribute("max") == "500"
    assert page.locator('[data-field="created"]').inner_text() == "500"
    assert page.evaluate("window.__marker") == "never reloaded"
    assert page.url.endswith(f"/batches/{batch_id}/")
    assert User.objects.filter(batch_id=batch_id).count() == 500
    page.screenshot(path=screenshot_path("batch-page"), full_page=True)


def test_the_progress_bar_shows_intermediate_values_while_the_worker_creates_users(
    page: Page, person: User, platform: Platform
) -> None:
    total = 10_000
    log_in(page, person)
    with platform.worker_paused():
        batch_id = submit_batch(page, total)
        assert bar_value(page) == 0

    wait_for(
        lambda: Batch.objects.get(pk=batch_id).created_count > 0, "the first chunk is committed"
    )
    # Held between two chunks' worth of progress, the page must catch up with the database.
    with platform.worker_paused():
        created = Batch.objects.get(pk=batch_id).created_count
        assert 0 < created < total, "the batch finished before it could be watched"
        page.wait_for_function(
            "() => { const bar = document.querySelector('progress[data-field=\"bar\"]');"
            " return bar.value > 0 && bar.value < bar.max; }"
        )
        intermediate = bar_value(page)

    assert 0 < intermediate < total
    expect(page.locator('[data-field="outcome"]')).to_contain_text(
        f"{total} users created in", timeout=DEADLINE_SECONDS * 1000
    )
    assert bar_value(page) == total


def test_see_these_users_lists_the_batch_page_by_page(
    page: Page, person: User, platform: Platform
) -> None:
    total = 2 * PAGE_SIZE + 20
    log_in(page, person)
    batch_id = submit_batch(page, total)
    link = page.get_by_role("link", name="See these users")
    link.wait_for(timeout=DEADLINE_SECONDS * 1000)
    link.click()
    page.wait_for_url(re.compile(rf"/users/\?batch={batch_id}$"))
    assert page.locator("p.count").inner_text() == f"{total} users, newest first."

    def usernames() -> list[str]:
        return page.locator("table tbody tr td:first-child").all_inner_texts()

    first = usernames()
    page.get_by_role("link", name="Older →").click()
    page.wait_for_url(re.compile(rf"/users/\?batch={batch_id}&page=2$"))
    second = usernames()
    page.get_by_role("link", name="Older →").click()
    page.wait_for_url(re.compile(rf"/users/\?batch={batch_id}&page=3$"))
    third = usernames()

    assert len(first) == len(second) == PAGE_SIZE
    assert len(third) == total - 2 * PAGE_SIZE
    assert not set(first) & set(second)
    assert all(USERNAME.fullmatch(name) for name in first + second + third)
    in_batch = set(User.objects.filter(batch_id=batch_id).values_list("username", flat=True))
    assert set(first + second + third) == in_batch
    page.get_by_role("link", name="← Newer").click()
    page.wait_for_url(re.compile(rf"/users/\?batch={batch_id}&page=2$"))
    assert usernames() == second


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("abc", "Enter a whole number, like 100."),
        ("1e3", "Enter a whole number, like 100."),
        ("0", f"Ensure this value is greater than or equal to {MIN_TOTAL}."),
        (str(MAX_TOTAL + 1), f"Ensure this value is less than or equal to {MAX_TOTAL}."),
    ],
)
def test_bad_totals_show_the_form_error_and_make_no_batch(
    page: Page, person: User, typed: str, error: str
) -> None:
    log_in(page, person)
    page.goto("/generate/")
    # The form has novalidate, yet a number input cannot hold "abc" (its value becomes ""), and
    # a browser honouring min/max could stop the others: as a plain text box without bounds it
    # sends exactly what was typed, so what shows is the server's own validation.
    field = page.get_by_label("How many users")
    field.evaluate(
        "input => { input.type = 'text'; input.removeAttribute('min');"
        " input.removeAttribute('max'); }"
    )
    field.fill(typed)
    with page.expect_navigation():
        page.get_by_role("button", name="Generate").click()

    assert page.url.endswith("/generate/")
    assert error in page.locator(".errorlist").all_inner_texts()
    assert not Batch.objects.exists()


def test_cancelling_a_running_batch_keeps_exactly_the_users_the_page_reports(
    page: Page, person: User, platform: Platform
) -> None:
    total = MAX_TOTAL
    log_in(page, person)
    with platform.worker_paused():
        batch_id = submit_batch(page, total)
    page.wait_for_function(
        "() => document.querySelector('progress[data-field=\"bar\"]').value > 0",
        timeout=DEADLINE_SECONDS * 1000,
    )
    # The page the cancel redirects to, not the old page's last poll, is what the person reads.
    with page.expect_navigation():
        page.get_by_role("button", name="Cancel batch").click()

    kept = re.fullmatch(rf"Cancelled: (\d+) of {total} users were kept\.", outcome(page))
    assert kept, outcome(page)
    wait_for(platform.worker_is_idle, "the worker has stopped the cancelled batch")
    batch = Batch.objects.get(pk=batch_id)
    assert batch.status == Batch.Status.CANCELLED
    assert int(kept.group(1)) == batch.created_count == User.objects.filter(batch=batch).count()
    assert batch.created_count < total


def test_realistic_seeded_batch_exports_as_csv_then_its_users_are_deleted_live(
    page: Page, person: User, platform: Platform
) -> None:
    total = 300
    log_in(page, person)
    page.goto("/generate/")
    page.get_by_label("How many users").fill(str(total))
    page.get_by_label("Realistic first and last names").check()
    page.get_by_label("Seed (optional)").fill("2026")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_url(BATCH_URL)
    batch_id = int(BATCH_URL.search(page.url).group(1))
    csv_link = page.get_by_role("link", name="Download them as CSV")
    csv_link.wait_for(timeout=DEADLINE_SECONDS * 1000)

    with page.expect_download() as download:
        csv_link.click()
    with Path(download.value.path()).open(newline="") as exported:
        header, *rows = list(csv.reader(exported))
    assert header == ["username", "email", "first_name", "last_name", "date_joined"]
    in_batch = User.objects.filter(batch_id=batch_id)
    assert {row[0] for row in rows} == set(in_batch.values_list("username", flat=True))
    assert len(rows) == total
    assert all(row[2] and row[3] for row in rows), "realistic names were asked for"

    page.get_by_role("button", name="Delete these users").click()
    page.get_by_role("button", name="Yes, delete these users").click()
    page.wait_for_url(BATCH_URL)
    page.evaluate("window.__marker = 'never reloaded'")
    expect(page.locator('[data-field="outcome"]')).to_have_text(
        f"{total} users deleted.", timeout=DEADLINE_SECONDS * 1000
    )
    assert page.evaluate("window.__marker") == "never reloaded"
    assert not in_batch.exists()
    assert Batch.objects.get(pk=batch_id).status == Batch.Status.DELETED


def test_a_cancelled_batch_resumed_from_its_page_ends_with_exactly_its_total(
    page: Page, person: User, platform: Platform
) -> None:
    total = 5_000
    log_in(page, person)
    with platform.worker_paused():
        batch_id = submit_batch(page, total)
        # Cancelled before the worker could start: nothing was made, all of it is missing.
        with page.expect_navigation():
            page.get_by_role("button", name="Cancel batch").click()
    assert outcome(page) == f"Cancelled: 0 of {total} users were kept."
    wait_for(platform.worker_is_idle, "the worker has dropped the cancelled batch")

    with page.expect_navigation():
        page.get_by_role("button", name="Resume batch").click()
    expect(page.locator('[data-field="outcome"]')).to_contain_text(
        f"{total} users created in", timeout=DEADLINE_SECONDS * 1000
    )
    batch = Batch.objects.get(pk=batch_id)
    assert batch.status == Batch.Status.FINISHED
    assert batch.created_count == User.objects.filter(batch=batch).count() == total
