"""Production settings, the dashboard's guards, and a queue that cannot be made to run code."""

import os
import pickle
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse
from rq.job import Job
from rq.serializers import DefaultSerializer

from generator import queueing
from generator.models import Batch, User


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


def manage(*arguments: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py in a process whose environment has no DJANGO_ variables but `env`."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")}
    clean.pop("DYNO", None)
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=settings.BASE_DIR,
        env={**clean, "DJANGO_SETTINGS_MODULE": "site_config.settings", **env},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "production", [{"DJANGO_DEBUG": "false"}, {"DYNO": "web.1"}], ids=["debug-off", "heroku-dyno"]
)
def test_production_refuses_to_start_without_a_secret_key(production):
    check = manage("check", **production)
    assert check.returncode != 0
    assert "Set DJANGO_SECRET_KEY" in check.stderr


def test_a_laptop_needs_no_configuration_to_run_management_commands(tmp_path: Path):
    # Only the database moves, so the test never touches a person's db.sqlite3.
    check = manage(
        "makemigrations", "--check", "--dry-run", DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3"
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No changes detected" in check.stdout


@pytest.mark.django_db
def test_queue_statistics_need_staff_or_the_api_token(settings, client, redis_connection):
    settings.RQ_API_TOKEN = "a-long-random-token"
    assert client.get("/django-rq/stats.json").status_code == 401
    assert client.get("/django-rq/stats.json/wrongtoken/").status_code == 401
    response = client.get(
        "/django-rq/stats.json", headers={"Authorization": "Bearer a-long-random-token"}
    )
    assert response.status_code == 200
    assert "queues" in response.json()


@pytest.mark.django_db
def test_unknown_job_ids_in_the_dashboard_are_404s(admin_client, queue):
    assert admin_client.get("/django-rq/queues/0/no-such-job/").status_code == 404
    assert admin_client.get("/django-rq/queues/0/batch-999999/").status_code == 404


class WritesAFile:
    """What an attacker who can write to Redis would put in a pickled job."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "pwned"))


@pytest.mark.django_db(transaction=True)
def test_a_pickled_job_slipped_into_redis_cannot_run_code(queue, run_worker, tmp_path):
    marker = tmp_path / "pwned"
    pickle.dumps(WritesAFile(marker))  # the payload is well formed
    job = Job.create(
        "generator.jobs.batch_run",
        args=(WritesAFile(marker),),
        connection=queue.connection,
        serializer=DefaultSerializer,
    )
    job.save()
    queue.push_job_id(job.id)
    batch = queueing.batch_submit(requested_by=None, total=50)

    run_worker()

    assert not marker.exists()
    # The worker went on with the real work after refusing the tampered job.
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 50


@pytest.mark.django_db
def test_the_dashboard_is_for_staff_only(reader_client, admin_client, queue):
    assert reader_client.get("/django-rq/").status_code == 302
    assert admin_client.get("/django-rq/").status_code == 200
    assert admin_client.get(reverse("admin:django_rq_dashboard_changelist")).status_code == 200
