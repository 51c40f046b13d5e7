"""Defence in depth: a strict CSP, secrets kept out of reports, defused CSV, private backups,
and JSON errors for bodies built to break the API."""

from __future__ import annotations

import csv
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from generator import backups, services
from generator.models import Batch, User

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_settings")]

SHARED_PASSWORD = "a long enough shared password"


def policy_of(response: Any) -> dict[str, list[str]]:
    directives = response.headers["Content-Security-Policy"].split(";")
    return {name: rest for name, *rest in (d.split() for d in directives if d.strip())}


@pytest.mark.parametrize(
    "url", ["login", "generator:generate", "generator:batch_list", "generator:user_list"]
)
def test_every_page_carries_a_strict_content_security_policy(admin_client: Client, url: str):
    response = admin_client.get(reverse(url))

    assert response.status_code == 200
    policy = policy_of(response)
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]


def test_our_templates_need_no_inline_script_or_style():
    """What the strict policy would block: inline <script>, <style> and style attributes."""
    template_dirs = [Path(settings.BASE_DIR) / "templates", Path(settings.BASE_DIR) / "generator"]
    offenders = []
    for directory in template_dirs:
        for template in directory.rglob("*.html"):
            text = template.read_text()
            for marker in ("<script>", "<style", " style=", " onclick=", " onload="):
                if marker in text:
                    offenders.append(f"{template.relative_to(settings.BASE_DIR)}: {marker}")
            for tag in text.split("<script")[1:]:
                if "src=" not in tag.split(">", 1)[0]:
                    offenders.append(f"{template.relative_to(settings.BASE_DIR)}: inline script")
    assert offenders == []


def test_the_dashboard_alone_gets_the_inline_allowance_its_templates_need(
    admin_client: Client, redis_connection: Any
):
    response = admin_client.get(reverse("django_rq:home"))

    assert response.status_code == 200
    policy = policy_of(response)
    assert "'unsafe-inline'" in policy["script-src"]
    assert policy["frame-ancestors"] == ["'none'"]


def test_the_shared_password_is_hidden_from_error_reports(generator_client: Client):
    response = generator_client.post(reverse("generator:generate"), {"total": "1", "password": "x"})

    # What Django's error reporter reads to know which POST fields to hide.
    assert response.wsgi_request.sensitive_post_parameters == ("password",)


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(
    generator_client: Client, generator_user: User
):
    batch = services.batch_create(requested_by=generator_user, total=50)
    attacks = ['=HYPERLINK("http://evil")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    User.objects.bulk_create(
        User(username=f"user_csv{index}", first_name=name, last_name="Plain", batch=batch)
        for index, name in enumerate(attacks)
    )
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.FINISHED, created_count=len(attacks)
    )

    response = generator_client.get(reverse("generator:batch_users_csv", args=[batch.pk]))

    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    first_names = sorted(row[2] for row in rows[1:])
    assert first_names == sorted("'" + attack for attack in attacks)
    assert all(row[3] == "Plain" for row in rows[1:])


def test_backups_are_readable_by_their_owner_only(settings, tmp_path: Path):
    directory = tmp_path / "backups"

    path = backups.backup_create(directory=directory, keep=2)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def post_raw(client: Client, body: bytes) -> Any:
    return client.post(reverse("generator:api_batch_create"), body, content_type="application/json")


def test_a_deeply_nested_json_body_is_a_400_json_error(generator_client: Client):
    response = post_raw(generator_client, b"[" * 100_000 + b"]" * 100_000)

    assert response.status_code == 400
    assert "JSON object" in response.json()["error"]
    assert Batch.objects.count() == 0


def test_a_too_large_body_is_a_413_json_error(generator_client: Client):
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = post_raw(generator_client, json.dumps({"total": 50, "pad": padding}).encode())

    assert response.status_code == 413
    assert "too large" in response.json()["error"]
    assert Batch.objects.count() == 0
