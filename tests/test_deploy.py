"""The deployment files agree with each other and with the settings."""

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from redis import Redis
from redis.exceptions import RedisError

from generator.models import Batch, User

from .support import (
    burst_worker,
    environment_variables_the_settings_read,
    free_port,
    procfile,
    subprocess_env,
    wait_for,
)


def app_json() -> dict:
    return json.loads((Path(settings.BASE_DIR) / "app.json").read_text())


def test_app_json_starts_only_processes_the_procfile_defines():
    assert set(app_json()["formation"]) <= set(procfile()) - {"release"}


def test_app_json_sets_only_variables_the_settings_read():
    read = environment_variables_the_settings_read()
    for name in app_json()["env"]:
        assert name in read, name


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


@pytest.mark.processes
def test_a_rediss_url_connects_with_tls_accepting_herokus_self_signed_certificates():
    seen = connection_settings_for("rediss://:secret@redis.example.com:6380/0")
    assert seen == {"class": "SSLConnection", "cert_reqs": "None", "host": "redis.example.com"}


@pytest.mark.processes
def test_a_rediss_url_can_require_a_proper_certificate():
    seen = connection_settings_for(
        "rediss://:secret@redis.example.com:6380/0", REDIS_SSL_CERT_REQS="required"
    )
    assert seen["class"] == "SSLConnection"
    assert seen["cert_reqs"] == "required"


@pytest.fixture(params=["", "s3ntinel-pass"], ids=["open", "with a password"])
def redis_behind_a_sentinel(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A private redis-server and a sentinel watching it, both behind the password if any;
    the sentinel REDIS_URL for both."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed to run a sentinel (scripts/test installs it)")
    password = request.param
    redis_port, sentinel_port = free_port(), free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor generator 127.0.0.1 {redis_port} 1\n"
        + (f"requirepass {password}\nsentinel auth-pass generator {password}\n" if password else "")
    )
    server = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    processes = [
        subprocess.Popen(
            server + (["--requirepass", password] if password else []), stdout=subprocess.DEVNULL
        ),
        subprocess.Popen(["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL),
    ]
    sentinel = Redis(port=sentinel_port, password=password or None)

    def watching() -> bool:
        try:
            return bool(
                sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "generator")
            )
        except RedisError:
            return False

    try:
        wait_for(watching, "the sentinel watches the redis-server", 20)
        credentials = f":{password}@" if password else ""
        yield f"redis-sentinel://{credentials}127.0.0.1:{sentinel_port}/generator/3"
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_sentinel_redis_url_carries_a_batch_from_the_command_line_to_a_worker(
    redis_behind_a_sentinel: str,
):
    env = subprocess_env(REDIS_URL=redis_behind_a_sentinel)
    run = {"cwd": settings.BASE_DIR, "env": env, "capture_output": True, "text": True}
    made = subprocess.run([sys.executable, "manage.py", "generate_users", "300"], check=True, **run)
    worker = burst_worker(timeout=60, REDIS_URL=redis_behind_a_sentinel)

    batch = Batch.objects.get(pk=int(made.stdout))
    assert batch.status == Batch.Status.FINISHED, worker.stdout + worker.stderr
    assert User.objects.filter(batch=batch).count() == 300
