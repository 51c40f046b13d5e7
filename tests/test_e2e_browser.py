"""What a person sees in a real browser: Chromium driving the Procfile's gunicorn and rqworker."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from generator.models import Batch, User

from .support import (
    DEADLINE_SECONDS,
    MAX_TOTAL,
    MIN_TOTAL,
    PAGE_SIZE,
    Platform,
    log_in,
    screenshot_path,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

USERNAME = re.compile(r"user_[A-Za-z]{10}")
BATCH_URL = re.compile(r"/batches/(\d+)/$")


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
    page: Page, person: User, browser_platform: Platform
) -> None:
    log_in(page, person)
    # Paused, the worker cannot finish before the page is drawn: it must draw the progress live.
    with browser_platform.worker_paused():
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


def test_the_request_message_stays_true_once_the_batch_has_finished(
    page: Page, person: User
) -> None:
    log_in(page, person)
    batch_id = submit_batch(page, 50)
    expect(page.locator('[data-field="outcome"]')).to_contain_text(
        "50 users created in", timeout=DEADLINE_SECONDS * 1000
    )

    # Read after the batch ended, the banner must still be true: no "starting shortly".
    expect(page.locator(".messages li")).to_have_text(f"Batch #{batch_id} requested: 50 users.")


def test_live_progress_stops_with_a_message_once_the_session_has_ended(
    page: Page, person: User, browser_platform: Platform
) -> None:
    log_in(page, person)
    with browser_platform.worker_paused():
        submit_batch(page, 500)
        stopped = page.locator('[data-field="stopped"]')
        assert stopped.is_hidden()
        # Logged out elsewhere: the fragment now redirects to the login page, never swapped in.
        page.context.clear_cookies()
        expect(stopped).to_be_visible()
        expect(stopped).to_have_text(
            "Live progress stopped: reload the page (you may need to log in again)."
        )
        assert page.locator("#batch-progress").get_attribute("aria-busy") == "false"
        assert page.get_by_role("heading", name="Log in").count() == 0


def test_the_progress_bar_shows_intermediate_values_while_the_worker_creates_users(
    page: Page, person: User, browser_platform: Platform
) -> None:
    total = 10_000
    log_in(page, person)
    with browser_platform.worker_paused():
        batch_id = submit_batch(page, total)
        assert bar_value(page) == 0

    wait_for(
        lambda: Batch.objects.get(pk=batch_id).created_count > 0, "the first chunk is committed"
    )
    # Held between two chunks' worth of progress, the page must catch up with the database.
    with browser_platform.worker_paused():
        created = Batch.objects.get(pk=batch_id).created_count
        assert 0 < created < total, "the batch finished before it could be watched"
        page.wait_for_function(
            "() => { const bar = document.querySelector('progress[data-field=\"bar\"]');"
            " return bar.value > 0 && bar.value < bar.max; }"
        )
        intermediate = bar_value(page)

    assert 0 < intermediate < total
    expect(page.locator('[data-field="outcome"]')).to_contain_text(
        f"{total:,} users created in", timeout=DEADLINE_SECONDS * 1000
    )
    assert bar_value(page) == total
    # The live figures are the server's own, thousands separators included.
    assert page.locator('[data-field="created"]').inner_text() == "10,000"


def test_see_these_users_lists_the_batch_page_by_page(
    page: Page, person: User, browser_platform: Platform
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
    page: Page, person: User, browser_platform: Platform
) -> None:
    total = MAX_TOTAL
    log_in(page, person)
    with browser_platform.worker_paused():
        batch_id = submit_batch(page, total)
    page.wait_for_function(
        "() => document.querySelector('progress[data-field=\"bar\"]').value > 0",
        timeout=DEADLINE_SECONDS * 1000,
    )
    # The page the cancel redirects to, not the old page's last poll, is what the person reads.
    with page.expect_navigation():
        page.get_by_role("button", name="Cancel batch").click()

    kept = re.fullmatch(rf"Cancelled: ([\d,]+) of {total:,} users were kept\.", outcome(page))
    assert kept, outcome(page)
    wait_for(browser_platform.worker_is_idle, "the worker has stopped the cancelled batch")
    batch = Batch.objects.get(pk=batch_id)
    assert batch.status == Batch.Status.CANCELLED
    reported = int(kept.group(1).replace(",", ""))
    assert reported == batch.created_count == User.objects.filter(batch=batch).count()
    assert batch.created_count < total


def test_realistic_seeded_batch_exports_as_csv_then_its_users_are_deleted_live(
    page: Page, person: User, browser_platform: Platform
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
    page: Page, person: User, browser_platform: Platform
) -> None:
    total = 5_000
    log_in(page, person)
    with browser_platform.worker_paused():
        batch_id = submit_batch(page, total)
        # Cancelled before the worker could start: nothing was made, all of it is missing.
        with page.expect_navigation():
            page.get_by_role("button", name="Cancel batch").click()
    assert outcome(page) == f"Cancelled: 0 of {total:,} users were kept."
    wait_for(browser_platform.worker_is_idle, "the worker has dropped the cancelled batch")

    with page.expect_navigation():
        page.get_by_role("button", name="Resume batch").click()
    expect(page.locator('[data-field="outcome"]')).to_contain_text(
        f"{total:,} users created in", timeout=DEADLINE_SECONDS * 1000
    )
    batch = Batch.objects.get(pk=batch_id)
    assert batch.status == Batch.Status.FINISHED
    assert batch.created_count == User.objects.filter(batch=batch).count() == total
