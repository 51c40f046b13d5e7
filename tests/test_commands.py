import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from generator import queueing
from generator.models import Batch, User

from .support import subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_generate_users_enqueues_and_prints_the_batch_id(queue):
    out = StringIO()
    call_command("generate_users", "1234", stdout=out)
    batch = Batch.objects.get()
    assert out.getvalue().strip() == str(batch.pk)
    assert batch.total == 1234
    assert queue.fetch_job(queueing.batch_job_id(batch)).args == [batch.pk]


@pytest.mark.parametrize(
    ("total", "message"),
    [
        ("0", "greater than or equal to 1"),
        ("-3", "greater than or equal to 1"),
        ("12.5", "Enter a whole number"),
        ("1e6", "Enter a whole number"),
        ("lots", "Enter a whole number"),
        ("9" * 5000, "less than or equal to"),
    ],
)
def test_generate_users_rejects_bad_totals_and_creates_nothing(queue, total, message):
    with pytest.raises(CommandError, match=message):
        call_command("generate_users", total, stdout=StringIO())
    assert not Batch.objects.exists()
    assert queue.count == 0


def test_generate_users_records_who_asked(queue, generator_user):
    call_command("generate_users", "60", "--requested-by", "alice", stdout=StringIO())
    assert Batch.objects.get().requested_by == generator_user
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("generate_users", "60", "--requested-by", "nobody", stdout=StringIO())


@pytest.mark.processes
def test_generate_users_wait_follows_a_real_worker_to_the_end(queue, run_worker):
    command = subprocess.Popen(
        [sys.executable, "manage.py", "generate_users", "3000", "--wait", "--poll-interval", "0.1"],
        cwd=settings.BASE_DIR,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def enqueued() -> bool:
        assert command.poll() is None, command.communicate()
        return queue.count == 1  # the batch's row commits first, then its job is queued

    try:
        wait_for(enqueued, "the command enqueued a batch", 30)
        run_worker()
        stdout, stderr = command.communicate(timeout=30)
    finally:
        command.kill()

    batch = Batch.objects.get()
    assert command.returncode == 0, stderr
    assert stdout.strip() == str(batch.pk)
    assert "3,000/3,000 100%" in stderr
    assert "3,000 users created in" in stderr
    assert User.objects.filter(batch=batch).count() == 3000


@pytest.mark.processes
def test_generate_users_reads_the_shared_password_from_stdin(queue, run_worker):
    command = subprocess.run(
        [sys.executable, "manage.py", "generate_users", "50", "--password-stdin"],
        cwd=settings.BASE_DIR,
        env=subprocess_env(),
        input="a long enough secret phrase\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "secret" not in command.stdout + command.stderr
    run_worker()
    user = User.objects.filter(batch__isnull=False).first()
    assert user.check_password("a long enough secret phrase")


def test_local_admin_creates_the_account_once_and_prints_how_to_log_in(tmp_path: Path, settings):
    settings.DEBUG = True
    credentials = tmp_path / "admin-password"
    first, second = StringIO(), StringIO()
    call_command("local_admin", "--credentials-file", str(credentials), stdout=first)
    call_command("local_admin", "--credentials-file", str(credentials), stdout=second)

    password = credentials.read_text().strip()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser
    assert admin.check_password(password)
    assert first.getvalue() == second.getvalue()
    assert f"as admin / {password}" in first.getvalue()

    assert credentials.stat().st_mode & 0o777 == 0o600


def test_local_admin_refuses_to_run_in_production(tmp_path: Path, settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="local runs"):
        call_command("local_admin", "--credentials-file", str(tmp_path / "admin-password"))
    assert not User.objects.filter(username="admin").exists()
