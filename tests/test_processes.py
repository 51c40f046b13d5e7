"""The Procfile as a platform runs it: release, then real gunicorn and rqworker processes."""

from __future__ import annotations

import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from generator import services
from generator.models import Batch, User

from .support import (
    PASSWORD,
    Browser,
    free_port,
    procfile_running,
    session_browser,
    subprocess_env,
    wait_for,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


@pytest.fixture
def platform(queue, tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """Run the Procfile's release step, then its web and worker processes, as Heroku would."""
    port = free_port()
    env = subprocess_env(
        PORT=str(port),
        WEB_CONCURRENCY="2",
        GENERATOR_RECONCILE_INTERVAL_SECONDS="1",
        GENERATOR_RECONCILE_GRACE_SECONDS="1",
    )
    with procfile_running(env, tmp_path, names=("web", "worker", "cron")) as started:
        yield f"http://127.0.0.1:{port}", list(started.values())


def test_procfile_web_and_worker_run_a_batch_over_http(platform, django_user_model):
    base_url, processes = platform
    person = django_user_model.objects.create_user("carol", "carol@example.org", PASSWORD)
    person.user_permissions.add(Permission.objects.get(codename="add_batch"))
    browser = Browser(base_url)

    url, _ = browser.post_form("/accounts/login/", {"username": "carol", "password": PASSWORD})
    assert not url.endswith("/accounts/login/"), "login failed"
    url, page = browser.post_form("/generate/", {"total": "321"})
    batch = Batch.objects.get()
    assert url == f"{base_url}/batches/{batch.pk}/"
    assert "batch-progress" in page

    def finished_status() -> dict | None:
        status = browser.get_json(f"/api/batches/{batch.pk}/")
        assert status["status"] != "failed", status
        return status if status["status"] == "finished" else None

    status = wait_for(
        finished_status,
        "the worker finished the batch",
        60,
        explain=lambda: browser.get_json(f"/api/batches/{batch.pk}/"),
        interval=0.2,
    )

    assert status["created"] == 321
    assert User.objects.filter(batch=batch).count() == 321
    _, page = browser.get(f"/batches/{batch.pk}/")
    assert "321 users created in" in page
    _, page = browser.get(f"/users/?batch={batch.pk}")
    assert "321 users, newest first." in page

    # A platform restart sends SIGTERM: both processes must be gone well within Heroku's 30 s.
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        assert process.wait(timeout=30) is not None


def people(django_user_model: type[User], count: int) -> list[User]:
    permission = Permission.objects.get(codename="add_batch")
    made = []
    for number in range(count):
        person = django_user_model.objects.create_user(f"person{number}")
        person.user_permissions.add(permission)
        made.append(person)
    return made


def submit(browser: Browser, total: str) -> tuple[str, str]:
    """POST the form: ("accepted", batch URL), ("refused", page) or (HTTP status, body)."""
    try:
        url, page = browser.post_form("/generate/", {"total": total})
    except urllib.error.HTTPError as error:
        return str(error.code), error.read().decode(errors="replace")
    if re.search(r"/batches/\d+/$", url):
        return "accepted", url
    return "refused", page


@pytest.mark.parametrize("person_count", [1, 10])
def test_fifty_concurrent_posts_are_all_answered_and_every_batch_completes(
    platform, django_user_model, person_count
):
    base_url, _ = platform
    browsers = [
        session_browser(base_url, person) for person in people(django_user_model, person_count)
    ]
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda n: submit(browsers[n % person_count], "50"), range(50)))

    outcomes = [outcome for outcome, _ in answers]
    assert set(outcomes) <= {"accepted", "refused"}, [a for a in answers if a[0][0].isdigit()][:1]
    refused = [page for outcome, page in answers if outcome == "refused"]
    assert all("batches waiting or running" in page for page in refused)
    accepted = {url for outcome, url in answers if outcome == "accepted"}
    assert len(accepted) == outcomes.count("accepted") == Batch.objects.count() > 0
    if person_count == 10:
        assert len(accepted) >= 10

    wait_for(
        lambda: not Batch.objects.exclude(status=Batch.Status.FINISHED).exists(),
        "every batch finished",
        60,
        explain=lambda: list(Batch.objects.values("id", "status")),
        interval=0.2,
    )
    for batch in Batch.objects.all():
        assert User.objects.filter(batch=batch).count() == batch.total == 50


def test_the_cron_process_enqueues_a_batch_whose_job_was_lost(platform):
    # Recorded but never enqueued, as when Redis lost its job: only the reconciler can save it.
    batch = services.batch_create(requested_by=None, total=400)
    wait_for(
        lambda: Batch.objects.filter(pk=batch.pk, status=Batch.Status.FINISHED).exists(),
        "the cron reconciler enqueued the batch and it finished",
        30,
        interval=0.2,
    )
    batch.refresh_from_db()
    assert batch.jobs_enqueued >= 1
    assert User.objects.filter(batch=batch).count() == 400
