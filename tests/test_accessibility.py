"""Every page and state a person meets passes axe-core with no serious or critical violation.

Chromium drives the Procfile's real gunicorn and rqworker (the conftest's browser platform).
States are written straight into the database: the worker only runs jobs it is given and
reconciles only when it starts, so a hand-made batch keeps the state it was made in.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.contrib.auth.models import Permission
from django.utils import timezone
from playwright.sync_api import Page, Route, expect

from generator.models import Batch, User

from .support import PAGE_SIZE, Platform, log_in_directly, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

BLOCKING_IMPACTS = ("serious", "critical")
AXE = Axe()
TOTAL = 200_000
Status = Batch.Status


def violations_report(violations: list[dict[str, Any]]) -> str:
    """One paragraph per violation: rule, impact, help, then each offending element."""
    lines = []
    for violation in violations:
        lines.append(
            f"{violation['id']} ({violation['impact']}): {violation['help']}"
            f" <{violation['helpUrl']}>"
        )
        for node in violation["nodes"]:
            target = " ".join(str(selector) for selector in node["target"])
            lines.append(f"  - {target}\n    {node['html']}")
            summary = node.get("failureSummary")
            if summary:
                lines.append("    " + summary.replace("\n", "\n    "))
    return "\n".join(lines)


def assert_accessible(page: Page) -> None:
    violations = AXE.run(page).response["violations"]
    blocking = [found for found in violations if found["impact"] in BLOCKING_IMPACTS]
    assert not blocking, f"axe-core, {page.url}:\n{violations_report(blocking)}"


def open_batch_page(page: Page, batch: Batch) -> None:
    """Open a batch page; a live one is held still once it has swapped in its first fragment.

    The script asks for the next fragment only after swapping in the last one, so the moment
    its second request arrives the swap is done; that request and any later one go unanswered,
    and axe checks a section the server rendered for the script, not a DOM changing under it.
    """
    polls: list[Route] = []

    def first_poll_only(route: Route) -> None:
        polls.append(route)
        if len(polls) == 1:
            route.continue_()

    page.route("**/batches/*/?fragment=progress", first_poll_only)
    page.goto(batch.get_absolute_url())
    if batch.is_done:
        return
    # Playwright's sync API answers the route only while it is called: wait through it.
    wait_for(
        lambda: len(polls) >= 2,
        "the page polled its progress twice",
        interval=0.02,
        sleep=lambda seconds: page.wait_for_timeout(seconds * 1000),
    )


@pytest.fixture
def requester(django_user_model: type[User]) -> User:
    """Someone who may generate users and manage their batches (no password: no hashing)."""
    made = django_user_model.objects.create_user("erin", "erin@example.org")
    made.user_permissions.add(Permission.objects.get(codename="add_batch"))
    return made


@pytest.fixture
def signed_in(page: Page, requester: User, browser_platform: Platform) -> Page:
    log_in_directly(page, requester, browser_platform.base_url)
    return page


def batch_in(status: Status, requested_by: User) -> Batch:
    """A batch as the worker would have left it in `status`, with figures past a thousand."""
    now = timezone.now()
    started = now - timedelta(minutes=2, seconds=5)
    fields: dict[str, Any] = {
        Status.PENDING: {},
        Status.RUNNING: {"created_count": 35_978, "started_at": now - timedelta(seconds=2)},
        Status.FINISHED: {"created_count": TOTAL, "started_at": started, "finished_at": now},
        Status.FAILED: {
            "created_count": 1_250,
            "started_at": started,
            "finished_at": now,
            "failure_reason": "The job ran out of time.",
        },
        Status.CANCELLED: {"created_count": 50_000, "started_at": started, "finished_at": now},
        Status.DELETING: {
            "created_count": TOTAL,
            "deleted_count": 80_000,
            "started_at": started,
            "finished_at": now,
        },
        Status.DELETED: {
            "created_count": TOTAL,
            "deleted_count": TOTAL,
            "started_at": started,
            "finished_at": now,
            "deleted_at": now,
        },
    }[status]
    return Batch.objects.create(requested_by=requested_by, total=TOTAL, status=status, **fields)


def users_of(batch: Batch, count: int) -> None:
    User.objects.bulk_create(
        User(username=f"user_{batch.pk}_{index}", password="!", batch=batch)
        for index in range(count)
    )


def test_the_login_page_has_no_serious_violation(page: Page) -> None:
    page.goto("/accounts/login/")

    assert_accessible(page)


def test_the_login_page_with_a_refused_login_has_no_serious_violation(page: Page) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("nobody")
    page.get_by_label("Password").fill("not the password")
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Please enter a correct username")

    assert_accessible(page)


def test_the_lockout_page_after_too_many_refused_logins_has_no_serious_violation(
    page: Page, settings: Any
) -> None:
    for _ in range(settings.AXES_FAILURE_LIMIT):
        page.goto("/accounts/login/")
        page.get_by_label("Username").fill("guessed")
        page.get_by_label("Password").fill("a wrong guess")
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Too many failed logins")

    assert_accessible(page)


def test_the_empty_generate_form_has_no_serious_violation(signed_in: Page) -> None:
    signed_in.goto("/generate/")

    assert_accessible(signed_in)


def test_the_generate_form_with_errors_has_no_serious_violation(signed_in: Page) -> None:
    signed_in.goto("/generate/")
    signed_in.get_by_label("How many users").fill("1")
    signed_in.get_by_label("Seed (optional)").fill("-5")
    with signed_in.expect_navigation():
        signed_in.get_by_role("button", name="Generate").click()
    total = signed_in.get_by_label("How many users")
    expect(total).to_have_attribute("aria-invalid", "true")
    # The error is read with the field, not only shown near it.
    expect(total).to_have_accessible_description(
        re.compile(r"From 50 to [\d,]+\. Ensure this value is greater than or equal to 50\.")
    )

    assert_accessible(signed_in)
    assert not Batch.objects.exists()


@pytest.mark.parametrize("status", list(Status), ids=[status.value for status in Status])
def test_the_batch_page_in_each_state_has_no_serious_violation(
    signed_in: Page, requester: User, status: Status
) -> None:
    batch = batch_in(status, requester)
    open_batch_page(signed_in, batch)
    expect(signed_in.locator("#batch-progress")).to_have_class(f"progress status-{status}")

    assert_accessible(signed_in)
    assert Batch.objects.get(pk=batch.pk).status == status, "something moved the hand-made state"


def test_the_batch_list_has_no_serious_violation(signed_in: Page, requester: User) -> None:
    for status in Status:
        batch_in(status, requester)
    signed_in.goto("/batches/")
    expect(signed_in.locator("tbody tr")).to_have_count(len(Status))

    assert_accessible(signed_in)


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("", PAGE_SIZE),
        ("?page=2", PAGE_SIZE),
        ("?page=3", 30),
        ("?batch={batch_id}&page=2", PAGE_SIZE),
    ],
    ids=["first page", "middle page", "last page", "one batch, middle page"],
)
def test_the_users_list_has_no_serious_violation(
    signed_in: Page, requester: User, query: str, shown: int
) -> None:
    batch = batch_in(Status.FINISHED, requester)
    users_of(batch, 2 * PAGE_SIZE + 30)
    signed_in.goto(f"/users/{query.format(batch_id=batch.pk)}")
    expect(signed_in.locator("tbody tr")).to_have_count(shown)

    assert_accessible(signed_in)


def test_the_delete_confirmation_page_has_no_serious_violation(
    signed_in: Page, requester: User
) -> None:
    batch = batch_in(Status.FINISHED, requester)
    signed_in.goto(f"/batches/{batch.pk}/delete-users/")
    expect(signed_in.get_by_role("button", name="Yes, delete these users")).to_be_visible()

    assert_accessible(signed_in)
