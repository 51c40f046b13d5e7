"""Fail closed on every platform: no debug, no known key, no credentials on an error page.

Each attack of the audit is performed against real processes (manage.py, gunicorn, the
development server) started with the environment a platform or a laptop would give them.
"""

from __future__ import annotations

import gzip
import http.server
import os
import re
import secrets
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest
from django.conf import settings
from django.contrib.messages import constants
from django.contrib.messages.storage.base import Message
from django.contrib.messages.storage.cookie import CookieStorage
from django.http import HttpRequest
from django.test import Client, override_settings
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.debug import ExceptionReporter
from django.views.decorators.debug import sensitive_variables

from .support import bare_environment, free_port, manage, procfile, wait_for, wait_until_up

# The key that an earlier version of the settings used whenever none was set.
THE_REPOSITORYS_OLD_KEY = "django-insecure-local-development-only"
REDIS_PASSWORD = "redis-pass-" + secrets.token_hex(6)
DATABASE_PASSWORD = "db-pass-" + secrets.token_hex(6)
# An empty SQLite file (relative to the project, as the URL's form allows) with a password in
# its URL: the server starts, and a page that reads the session raises (no such table).
EMPTY_DATABASE = f".local/empty-{secrets.token_hex(4)}.sqlite3"
EMPTY_DATABASE_URL = f"sqlite://generator:{DATABASE_PASSWORD}@/{EMPTY_DATABASE}"
REDIS_URL_WITH_PASSWORD = f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/15"


@pytest.mark.processes
@pytest.mark.parametrize(
    "platform",
    [{}, {"DJANGO_DEBUG": "false"}, {"DJANGO_DEBUG": "true"}, {"DYNO": "web.1"}],
    ids=["nothing-set", "debug-off", "debug-asked-for", "heroku-dyno"],
)
def test_no_command_starts_without_a_secret_key_and_one_line_names_the_fix(platform):
    check = manage("check", **platform)
    assert check.returncode != 0
    assert check.stderr.count("\n") == 1, check.stderr
    assert check.stderr.startswith("Error: DJANGO_SECRET_KEY is not set")
    assert "scripts/run" in check.stderr


@pytest.mark.processes
def test_every_model_change_has_its_migration(tmp_path: Path):
    check = manage(
        "makemigrations",
        "--check",
        "--dry-run",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No changes detected" in check.stdout


@pytest.mark.processes
def test_gunicorn_refuses_to_serve_without_a_secret_key():
    web = subprocess.run(
        ["bash", "-c", f"exec {procfile()['web']}"],
        cwd=settings.BASE_DIR,
        env=bare_environment(PORT=str(free_port()), WEB_CONCURRENCY="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert web.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in web.stderr


@pytest.mark.processes
def test_debug_is_off_unless_asked_for(tmp_path: Path):
    settings_seen = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.DEBUG)",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
    )
    assert settings_seen.returncode == 0, settings_seen.stderr
    assert settings_seen.stdout.strip().endswith("False")


@pytest.mark.processes
def test_the_env_file_the_scripts_write_is_private_random_and_kept(tmp_path: Path):
    env_file = tmp_path / "laptop.env"
    write = [
        "bash",
        "-c",
        'source scripts/lib.sh && VENV="$(dirname "$(dirname "$1")")" && ensure_env_file',
        "ensure_env_file",
        sys.executable,
    ]
    environment = bare_environment(
        GENERATOR_ENV_FILE=str(env_file), GENERATOR_LOCAL_DIR=str(tmp_path / "local")
    )
    subprocess.run(write, cwd=settings.BASE_DIR, env=environment, check=True)
    first = env_file.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "DJANGO_DEBUG=true" in first
    key = first.split("DJANGO_SECRET_KEY=", 1)[1].split("\n", 1)[0]
    assert len(key) >= 50
    assert key != THE_REPOSITORYS_OLD_KEY

    subprocess.run(write, cwd=settings.BASE_DIR, env=environment, check=True)
    assert env_file.read_text() == first, "a second run must keep the key (and the sessions)"

    check = manage(
        "check", GENERATOR_ENV_FILE=str(env_file), DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3"
    )
    assert check.returncode == 0, check.stderr
    debug = manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.DEBUG)",
        GENERATOR_ENV_FILE=str(env_file),
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
    )
    assert debug.stdout.strip().endswith("True"), debug.stderr


def forged_messages_cookie(key: str) -> str:
    """A messages cookie carrying raw HTML marked safe, signed with `key`."""
    forged = Message(constants.ERROR, mark_safe('<b id="forged">owned</b>'))
    with override_settings(SECRET_KEY=key):
        return CookieStorage(HttpRequest())._encode([forged])


@pytest.mark.django_db
def test_a_messages_cookie_forged_with_the_old_repository_key_is_ignored():
    client = Client()
    client.cookies["messages"] = forged_messages_cookie(THE_REPOSITORYS_OLD_KEY)
    page = client.get(reverse("login")).content.decode()
    assert 'id="forged"' not in page

    # The same forgery with the real key does get in: the attack above was a real one.
    client.cookies["messages"] = forged_messages_cookie(settings.SECRET_KEY)
    page = client.get(reverse("login")).content.decode()
    assert '<b id="forged">owned</b>' in page


@contextmanager
def serving(
    command: str, log: Path | None = None, database_url: str = EMPTY_DATABASE_URL, **env: str
) -> Iterator[str]:
    """A Procfile web command serving on a free port, with a database that has no tables."""
    port = free_port()
    output = (log or Path(os.devnull)).open("w")
    process = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=settings.BASE_DIR,
        env=bare_environment(
            **{
                "PORT": str(port),
                "WEB_CONCURRENCY": "1",
                "DJANGO_HTTPS": "false",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
                "DATABASE_URL": database_url,
                "REDIS_URL": REDIS_URL_WITH_PASSWORD,
                "PYTHONUNBUFFERED": "1",
                **env,
            }
        ),
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base_url}/healthz/", process, timeout=60)
        yield base_url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        output.close()
        (Path(settings.BASE_DIR) / EMPTY_DATABASE).unlink(missing_ok=True)


def error_page(base_url: str) -> str:
    """What an anonymous visitor gets from a page whose session lookup raises."""
    request = urllib.request.Request(
        f"{base_url}/batches/", headers={"Cookie": "sessionid=anything"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 500
    return error.value.read().decode()


@pytest.mark.processes
def test_a_production_error_page_shows_nothing_of_the_settings():
    with serving(procfile()["web"], DJANGO_SECRET_KEY=secrets.token_urlsafe(50)) as base_url:
        page = error_page(base_url)
    assert "Traceback" not in page
    assert "REDIS_URL" not in page
    assert REDIS_PASSWORD not in page
    assert DATABASE_PASSWORD not in page


@pytest.mark.processes
def test_even_the_debug_page_hides_the_passwords_inside_urls():
    development_server = (Path(settings.BASE_DIR) / "Procfile.dev").read_text()
    web = next(line.split(": ", 1)[1] for line in development_server.splitlines() if line)
    with serving(
        f"{web} --noreload",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_DEBUG="true",
    ) as base_url:
        page = error_page(base_url)
    # It is the debug page, with the settings and the environment (the development server
    # copies it into request.META) that hold both URLs...
    assert "Traceback" in page
    assert "REDIS_URL" in page
    assert "RQ_QUEUES" in page
    assert "DATABASE_URL" in page
    # ...and neither password.
    assert REDIS_PASSWORD not in page
    assert DATABASE_PASSWORD not in page
    assert re.search(r"redis://\*+@127\.0\.0\.1:6379/15", page)


@pytest.mark.processes
def test_a_production_error_leaves_its_traceback_in_the_log(tmp_path: Path):
    log = tmp_path / "web.log"
    with serving(procfile()["web"], log, DJANGO_SECRET_KEY=secrets.token_urlsafe(50)) as base_url:
        error_page(base_url)
    written = log.read_text()
    assert "ERROR django.request: Internal Server Error: /batches/" in written
    assert "Traceback (most recent call last)" in written
    assert "no such table" in written


class SentryIngest(http.server.BaseHTTPRequestHandler):
    """Just enough of Sentry's ingest endpoint to keep what the SDK sends."""

    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        SentryIngest.received.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


# A PostgreSQL server that is not there: the driver's connection parameters, password
# included, sit in the local variables of the frames that raise.
UNREACHABLE_POSTGRES_URL = f"postgres://generator:{DATABASE_PASSWORD}@127.0.0.1:1/generator"


@pytest.mark.processes
def test_sentry_dsn_sends_a_production_error_to_the_tracker():
    ingest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SentryIngest)
    threading.Thread(target=ingest.serve_forever, daemon=True).start()
    dsn = f"http://publickey@127.0.0.1:{ingest.server_address[1]}/1"
    try:
        with serving(
            procfile()["web"],
            database_url=UNREACHABLE_POSTGRES_URL,
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            SENTRY_DSN=dsn,
        ) as base_url:
            error_page(base_url)
            wait_for(
                lambda: any(b"OperationalError" in body for body in SentryIngest.received),
                "the error reached the tracker",
                timeout=20,
            )
    finally:
        ingest.shutdown()
    sent = b"".join(SentryIngest.received)
    assert REDIS_PASSWORD.encode() not in sent
    assert DATABASE_PASSWORD.encode() not in sent


@pytest.mark.processes
def test_the_debug_page_hides_the_drivers_connection_password_and_a_query_string_password():
    redis_password_in_query = "redis-query-pass-" + secrets.token_hex(6)
    with serving(
        procfile()["web"],
        database_url=UNREACHABLE_POSTGRES_URL,
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_DEBUG="true",
        REDIS_URL=f"redis://127.0.0.1:6379/15?password={redis_password_in_query}",
    ) as base_url:
        page = error_page(base_url)
    assert "OperationalError" in page  # the debug page, with psycopg's frames and their locals
    assert "conn_params" in page
    assert DATABASE_PASSWORD not in page
    assert redis_password_in_query not in page


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_a_batchs_shared_password_is_hidden_from_the_report_in_debug_mode_too(settings, debug):
    settings.DEBUG = debug
    shared = "shared-password-" + secrets.token_hex(6)

    @sensitive_variables("password")
    def batch_submit(*, password: str) -> None:
        payload = {"total": 50, "password": password}
        raise RuntimeError(f"failed with {len(payload)} fields")

    try:
        batch_submit(password=shared)
    except RuntimeError as error:
        # From the decorated call down: this test's own frame holds the password in the clear.
        below_this_test = error.__traceback__.tb_next if error.__traceback__ else None
        report = ExceptionReporter(None, RuntimeError, error, below_this_test).get_traceback_html()
    assert "failed with 2 fields" in report
    assert shared not in report
