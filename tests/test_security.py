"""Production settings, the dashboard's guards, and a queue that cannot be made to run code."""

import os
import pickle
import secrets
import subprocess
import sys

import pytest
from django.conf import settings
from django.urls import reverse
from django_rq.urls import get_admin_urlpatterns
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from generator import use_cases
from generator.models import Batch, User

from .support import RealPickle, WritesAFile


@pytest.mark.processes
def test_check_deploy_is_clean_with_production_settings():
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_URL", "REDIS_URL"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="site_config.settings",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="generator.example.com",
    )
    check = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "System check identified no issues" in check.stdout


@pytest.mark.django_db
def test_queue_statistics_need_the_dashboard_permission_or_the_api_token_header(
    settings, client, staff_client, redis_connection
):
    settings.RQ_API_TOKEN = "a-long-random-token"
    assert client.get("/django-rq/stats.json").status_code == 401
    assert staff_client.get("/django-rq/stats.json").status_code == 401
    # In the URL even the right token opens nothing: access logs and history keep URLs.
    assert client.get("/django-rq/stats.json/a-long-random-token/").status_code == 404
    response = client.get(
        "/django-rq/stats.json", headers={"Authorization": "Bearer a-long-random-token"}
    )
    assert response.status_code == 200
    assert "queues" in response.json()


@pytest.mark.django_db
def test_unknown_job_ids_in_the_dashboard_are_404s(admin_client, queue):
    assert admin_client.get("/django-rq/queues/0/no-such-job/").status_code == 404
    assert admin_client.get("/django-rq/queues/0/batch-999999/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_pickled_job_slipped_into_redis_cannot_run_code(queue, run_worker, tmp_path):
    marker = tmp_path / "pwned"
    pickle.dumps(WritesAFile(marker))  # the payload is well formed
    job = Job.create(
        "generator.jobs.batch_run",
        args=(WritesAFile(marker),),
        connection=queue.connection,
        serializer=RealPickle,
    )
    job.save()
    queue.push_job_id(job.id)
    batch = use_cases.batch_submit(requested_by=None, total=50)

    run_worker()

    assert not marker.exists()
    # The worker went on with the real work after refusing the tampered job.
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 50


DASHBOARDS = ["/django-rq/", "/admin/django_rq/dashboard/"]


@pytest.mark.django_db
@pytest.mark.parametrize("root", DASHBOARDS)
def test_the_dashboard_is_for_staff_with_its_own_permission(
    reader_client, staff_client, dashboard_client, admin_client, queue, root
):
    assert reader_client.get(root).status_code == 302
    assert staff_client.get(root).status_code == 403
    assert dashboard_client.get(root).status_code == 200
    assert admin_client.get(root).status_code == 200


def queued_job(queue: Queue) -> Job:
    """A real job of the app's, enqueued at once (django-rq's own queue waits for a commit)."""
    plain = Queue(queue.name, connection=queue.connection, serializer=JSONSerializer)
    return plain.enqueue("generator.jobs.batches_reconcile")


@pytest.mark.django_db
@pytest.mark.parametrize("root", DASHBOARDS)
def test_staff_without_the_permission_can_neither_empty_the_queue_nor_delete_a_job(
    staff_client, queue, root
):
    job = queued_job(queue)

    emptied = staff_client.post(f"{root}queues/0/empty/")
    deleted = staff_client.post(f"{root}queues/0/{job.id}/delete/")
    acted = staff_client.post(f"{root}queues/actions/0/", {"action": "delete", "job_ids": [job.id]})

    assert queue.count == 1
    assert Job.exists(job.id, connection=queue.connection)
    assert [emptied.status_code, deleted.status_code, acted.status_code] == [403, 403, 403]


@pytest.mark.django_db
@pytest.mark.parametrize("root", DASHBOARDS)
@pytest.mark.parametrize("who", ["dashboard_client", "admin_client"])
def test_the_dashboard_permission_lets_staff_empty_the_queue(request, queue, root, who):
    client = request.getfixturevalue(who)
    job = queued_job(queue)

    response = client.post(f"{root}queues/0/empty/")

    assert response.status_code == 302
    assert queue.count == 0
    assert not Job.exists(job.id, connection=queue.connection)


# A value for each of django-rq's URL parameters: the permission is checked before any is used.
URL_ARGUMENTS = {
    "queue_index": 0,
    "job_id": "planted",
    "result_id": "planted",
    "key": "rq:worker:planted",
    "scheduler_index": 0,
    "connection_index": 0,
    "scheduler_name": "planted",
    "cron_job_name": "planted",
}


@pytest.mark.django_db
@pytest.mark.parametrize("namespace", ["django_rq:", "admin:django_rq_"])
def test_every_dashboard_page_refuses_staff_without_the_permission(staff_client, queue, namespace):
    pages = [
        reverse(
            f"{namespace}{pattern.name}",
            kwargs={name: URL_ARGUMENTS[name] for name in pattern.pattern.converters},
        )
        for pattern in get_admin_urlpatterns()
    ]
    assert len(pages) > 20

    refused = {page: staff_client.get(page).status_code for page in pages}

    assert refused == dict.fromkeys(pages, 403)


@pytest.mark.django_db
def test_the_admin_links_the_dashboard_only_for_its_permission(
    staff_client, dashboard_client, admin_client
):
    link = f'href="{reverse("admin:django_rq_dashboard_changelist")}"'
    assert link not in staff_client.get(reverse("admin:index")).content.decode()
    assert link in dashboard_client.get(reverse("admin:index")).content.decode()
    assert link in admin_client.get(reverse("admin:index")).content.decode()
