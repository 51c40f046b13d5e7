"""What operators watch: django-rq's Prometheus metrics behind the API token, the worker's log."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from rq import Queue

from generator import use_cases
from generator.models import Batch, User

from .support import burst_worker

pytestmark = pytest.mark.usefixtures("fast_settings")

TOKEN = "a-long-random-metrics-token"
METRICS = "/django-rq/metrics/"
STATS = "/django-rq/stats.json"
DASHBOARDS = ["/django-rq/", "/admin/django_rq/dashboard/"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.django_db(transaction=True)
def test_metrics_answer_the_api_token_with_the_queues_real_figures(settings, client, queue: Queue):
    settings.RQ_API_TOKEN = TOKEN
    # Outside a transaction: django-rq enqueues on commit.
    queue.enqueue("generator.jobs.batches_reconcile")

    response = client.get(METRICS, headers=bearer(TOKEN))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert re.search(r'^rq_jobs\{queue="default",status="queued"\} 1\.0$', body, re.MULTILINE)
    assert "# TYPE rq_workers gauge" in body


@pytest.mark.django_db
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("not-the-token"), {"Authorization": TOKEN}, bearer("")],
    ids=["no header", "wrong token", "no Bearer scheme", "empty token"],
)
def test_metrics_and_stats_refuse_a_request_without_the_token(
    settings, reader_client: Client, redis_connection, headers: dict[str, str]
):
    settings.RQ_API_TOKEN = TOKEN
    # A logged-in person who is not staff is no better than an anonymous one.
    for path in (METRICS, "/django-rq/stats.json"):
        response = reader_client.get(path, headers=headers)
        assert response.status_code == 401, path
        assert b"rq_" not in response.content
        assert b"queues" not in response.content


@pytest.mark.django_db
def test_an_unset_token_lets_no_one_in_by_token(settings, client, redis_connection):
    settings.RQ_API_TOKEN = ""
    assert client.get(METRICS, headers=bearer("")).status_code == 401
    assert client.get(METRICS, headers=bearer("anything")).status_code == 401
    assert client.get("/django-rq/stats.json", headers=bearer("anything")).status_code == 401


@pytest.mark.django_db
def test_the_dashboards_users_read_the_metrics_with_their_session(
    settings, admin_client, dashboard_client, staff_client, redis_connection
):
    settings.RQ_API_TOKEN = TOKEN
    for path in (METRICS, STATS):
        assert admin_client.get(path).status_code == 200, path
        assert dashboard_client.get(path).status_code == 200, path
        # The staff flag alone is not the dashboard's permission.
        assert staff_client.get(path).status_code == 401, path


@pytest.mark.django_db
@pytest.mark.parametrize("root", DASHBOARDS)
def test_the_stats_answer_the_token_in_the_authorization_header(
    settings, client, redis_connection, root
):
    settings.RQ_API_TOKEN = TOKEN

    response = client.get(f"{root}stats.json", headers=bearer(TOKEN))

    assert response.status_code == 200
    assert [queue["name"] for queue in response.json()["queues"]] == ["default", "maintenance"]


# django-rq's stats.json/<token>/ route is gone: /django-rq/ answers 404; the admin sends
# anyone not logged in to its login page, as it does for every URL it does not know.
URL_TOKEN_REFUSALS = [("/django-rq/", 404), ("/admin/django_rq/dashboard/", 302)]


@pytest.mark.django_db
@pytest.mark.parametrize(("root", "refusal"), URL_TOKEN_REFUSALS)
def test_the_token_in_the_url_opens_nothing(
    settings, client, staff_client, redis_connection, root, refusal
):
    # Access logs, proxies and browser history keep URLs. django-rq's route took \w+ only.
    token = TOKEN.replace("-", "_")
    settings.RQ_API_TOKEN = token

    anonymous = client.get(f"{root}stats.json/{token}/")
    staff = staff_client.get(f"{root}stats.json/{token}/")

    assert anonymous.status_code == refusal
    assert staff.status_code == 404
    assert b"queues" not in anonymous.content + staff.content


@pytest.mark.django_db
@pytest.mark.parametrize(("root", "refusal"), URL_TOKEN_REFUSALS)
def test_a_non_ascii_token_is_refused_not_a_server_error(
    settings, client, redis_connection, root, refusal
):
    # django-rq 4.2 hands it to secrets.compare_digest, which raises on non-ASCII text: a 500.
    settings.RQ_API_TOKEN = TOKEN

    assert client.get(f"{root}stats.json/t\u00f6ken/").status_code == refusal
    for path in (f"{root}stats.json", f"{root}metrics/"):
        assert client.get(path, headers=bearer("t\u00f6ken")).status_code == 401, path


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_the_worker_log_names_the_batch_each_chunk_and_the_rate(settings, queue: Queue):
    settings.GENERATOR_CHUNK_SIZE = 100
    batch = use_cases.batch_submit(requested_by=None, total=450, enforce_limits=False)

    worker = burst_worker()

    assert worker.returncode == 0, worker.stderr
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 450
    lines = re.findall(
        rf"batch {batch.pk}: chunk (\d+) done, (\d+)/450 users \((\d+) users/s\)", worker.stderr
    )
    assert sorted(int(chunk) for chunk, _, _ in lines) == [0, 1, 2, 3, 4], worker.stderr
    assert max(int(created) for _, created, _ in lines) == 450
    assert all(int(rate) > 0 for _, _, rate in lines)
