"""The deployment files agree with each other and with the settings."""

import json
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from .conftest import subprocess_env
from .test_processes import procfile


def app_json() -> dict:
    return json.loads((Path(settings.BASE_DIR) / "app.json").read_text())


def test_app_json_starts_only_processes_the_procfile_defines():
    assert set(app_json()["formation"]) <= set(procfile()) - {"release"}


def test_app_json_sets_only_variables_the_settings_read():
    settings_source = (Path(settings.BASE_DIR) / "site_config" / "settings.py").read_text()
    for name in app_json()["env"]:
        assert f'"{name}"' in settings_source, name


def test_the_python_version_file_names_a_python_django_supports():
    major, minor = (Path(settings.BASE_DIR) / ".python-version").read_text().split(".")[:2]
    assert (int(major), int(minor)) >= (3, 12)


def connection_settings_for(redis_url: str, **env: str) -> dict:
    """How the app's queue connects, as a process started with this REDIS_URL sees it."""
    script = (
        "import json, django_rq; pool = django_rq.get_connection('default').connection_pool;"
        "print(json.dumps({'class': pool.connection_class.__name__,"
        " 'cert_reqs': str(pool.connection_kwargs.get('ssl_cert_reqs')),"
        " 'host': pool.connection_kwargs.get('host')}))"
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", script],
        cwd=settings.BASE_DIR,
        env=subprocess_env(REDIS_URL=redis_url, **env),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def test_a_rediss_url_connects_with_tls_accepting_herokus_self_signed_certificates():
    seen = connection_settings_for("rediss://:secret@redis.example.com:6380/0")
    assert seen == {"class": "SSLConnection", "cert_reqs": "None", "host": "redis.example.com"}


def test_a_rediss_url_can_require_a_proper_certificate():
    seen = connection_settings_for(
        "rediss://:secret@redis.example.com:6380/0", REDIS_SSL_CERT_REQS="required"
    )
    assert seen["class"] == "SSLConnection"
    assert seen["cert_reqs"] == "required"
