"""The real queue path: commit, enqueue on the real Redis, a real burst worker, the database."""

import re
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import OperationalError, connection, connections
from django.urls import reverse
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from generator import queueing, use_cases
from generator.models import Batch, User
from generator.worker import BatchWorker, database_connected_meanwhile

from .support import burst_worker, free_port, subprocess_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "Tr0ub4dor&3-horse-staple"


def redis_contents(redis_connection: Redis) -> bytes:
    """Every key and value in the tests' Redis DB index, as one blob to search."""
    blob = []
    for key in redis_connection.scan_iter():
        blob.append(key)
        kind = redis_connection.type(key)
        if kind == b"string":
            blob.append(redis_connection.get(key) or b"")
        elif kind == b"hash":
            for field, value in redis_connection.hgetall(key).items():
                blob += [field, value]
        elif kind == b"list":
            blob += redis_connection.lrange(key, 0, -1)
        elif kind == b"zset":
            blob += redis_connection.zrange(key, 0, -1)
        elif kind == b"set":
            blob += list(redis_connection.smembers(key))
    return b"\n".join(blob)


def test_form_post_to_finished_batch_through_a_real_worker(generator_client, queue, run_worker):
    response = generator_client.post(reverse("generator:generate"), {"total": "137"})

    batch = Batch.objects.get()
    assert response.status_code == 302
    assert response["Location"] == batch.get_absolute_url()
    assert batch.status == Batch.Status.PENDING
    job = queue.fetch_job(queueing.batch_job_id(batch))
    assert job is not None
    assert job.func_name == "generator.jobs.batch_run"
    assert job.args == [batch.pk]
    assert job.kwargs == {}

    run_worker()

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    users = User.objects.filter(batch=batch)
    assert users.count() == 137
    for user in users:
        assert re.fullmatch(r"user_[A-Za-z]{10}", user.username)
        assert user.email == f"{user.username}@example.com"
    job = queue.fetch_job(queueing.batch_job_id(batch))
    assert job.get_status() == "finished"
    assert job.return_value() == {"batch_id": batch.pk, "status": "finished", "created": 137}
    assert job.meta == {"runs_in_worker": True, "created": 137, "total": 137}

    status = generator_client.get(reverse("generator:api_batch_detail", args=[batch.pk])).json()
    assert status["status"] == "finished"
    assert status["created"] == status["total"] == 137
    assert status["percent"] == 100
    assert status["done"] is True
    assert status["users_url"] == f"/users/?batch={batch.pk}"
    assert status["elapsed_seconds"] >= 0


def test_no_password_reaches_redis(generator_client, queue, run_worker, redis_connection):
    generator_client.post(reverse("generator:generate"), {"total": "50", "password": SECRET})
    batch = Batch.objects.get()
    assert redis_contents(redis_connection)  # the job is there to be searched

    run_worker()

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    contents = redis_contents(redis_connection)
    assert SECRET.encode() not in contents
    assert batch.password_hash.encode() not in contents
    assert b"pbkdf2" not in contents
    assert User.objects.filter(batch=batch).first().check_password(SECRET)


def test_a_job_timeout_fails_the_batch_with_a_reason_and_keeps_its_chunks(
    settings, queue: Queue, run_worker
):
    settings.GENERATOR_JOB_TIMEOUT = 1
    settings.GENERATOR_CHUNK_SIZE = 500
    batch = use_cases.batch_submit(requested_by=None, total=5_000_000)

    run_worker()

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FAILED
    assert batch.failure_reason == "The batch took longer than the job time limit allows."
    assert 0 < batch.created_count < batch.total
    # Chunks commit their users and the count together: the two never disagree.
    assert User.objects.filter(batch=batch).count() == batch.created_count
    assert queue.fetch_job(queueing.batch_run_job_id(batch.pk, 1)).get_status() == "failed"


def test_a_batch_submitted_while_redis_is_down_is_kept_pending(settings, redis_connection):
    settings.RQ_QUEUES = {
        "default": {**settings.RQ_QUEUES["default"], "URL": "redis://127.0.0.1:1/0"}
    }
    batch = use_cases.batch_submit(requested_by=None, total=50)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.PENDING
    assert not redis_connection.exists(f"rq:job:{queueing.batch_job_id(batch)}")


def test_the_work_horse_is_connected_to_the_database_once_rq_has_prepared_its_job():
    connections.close_all()
    with database_connected_meanwhile():
        pass  # where RQ writes the job's state to Redis
    assert connection.connection is not None
    with connection.cursor() as cursor:  # in this thread, where the job runs
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_a_database_unreachable_ahead_of_the_job_is_logged_and_left_to_the_job(caplog, tmp_path):
    connections.close_all()
    unreachable = (
        {"NAME": str(tmp_path / "missing" / "db.sqlite3")}
        if connection.vendor == "sqlite"
        else {"HOST": "127.0.0.1", "PORT": str(free_port())}
    )
    saved = {name: connection.settings_dict[name] for name in unreachable}
    connection.settings_dict.update(unreachable)
    try:
        with database_connected_meanwhile():
            pass
        assert connection.connection is None
        assert "could not connect to the database ahead of the job" in caplog.text
        with pytest.raises(OperationalError):
            connection.ensure_connection()  # the job's own first query reports it
    finally:
        connection.settings_dict.update(saved)
        connections.close_all()


@pytest.mark.processes
def test_the_procfile_worker_makes_a_small_batch_in_its_own_process(queue, settings):
    settings.GENERATOR_IN_WORKER_MAX_TOTAL = 300
    small = use_cases.batch_submit(requested_by=None, total=300)
    big = use_cases.batch_submit(requested_by=None, total=301)
    assert queueing.job_runs_in_worker(queue.fetch_job(queueing.batch_job_id(small)))
    assert not queueing.job_runs_in_worker(queue.fetch_job(queueing.batch_job_id(big)))

    worker = burst_worker()

    assert worker.returncode == 0, worker.stderr
    log = worker.stdout + worker.stderr
    made_in_worker = re.findall(r"job (\S+): made in the worker's own process", log)
    assert made_in_worker == [queueing.batch_job_id(small)]
    for batch in (small, big):
        batch.refresh_from_db()
        assert batch.status == Batch.Status.FINISHED
        assert User.objects.filter(batch=batch).count() == batch.total


def with_a_batch_worker(*lines: str) -> subprocess.CompletedProcess[str]:
    """`lines` run after a BatchWorker `worker` is made, in a process and a session of its own:
    a signal sent to the wrong process group reaches it, never the test run."""
    script = "\n".join(
        [
            "import django; django.setup()",
            "import signal, subprocess, django_rq",
            "from rq.serializers import JSONSerializer",
            "from generator.worker import BatchWorker",
            "worker = BatchWorker(['default'], connection=django_rq.get_connection('default'),"
            " serializer=JSONSerializer)",
            *lines,
        ]
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=settings.BASE_DIR,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
        start_new_session=True,
        check=False,
    )


@pytest.mark.processes
def test_a_stop_command_with_no_work_horse_running_kills_nothing():
    # RQ's stop-job command kills the work horse's process group; with none, RQ's own code
    # would take the worker's group for it.
    result = with_a_batch_worker("worker.kill_horse()", "print('still alive')")
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout == "still alive\n"


@pytest.mark.processes
@pytest.mark.usefixtures("queue")
def test_a_stop_command_for_a_run_made_in_the_worker_is_not_taken_for_a_stop():
    # The run goes on, so if it then fails, RQ must record it as failed, not as stopped.
    result = with_a_batch_worker(
        "from rq.command import handle_stop_job_command",
        "queue = django_rq.get_queue('default', serializer=JSONSerializer)",
        "job = queue.enqueue('generator.jobs.batch_run', 1)",
        "worker.set_current_job_id(job.id)",
        "handle_stop_job_command(worker, {'job_id': job.id})",
        "print(worker._stopped_job_id)",
        "worker.handle_job_failure(job, queue, exc_string='the run failed after the stop')",
        "worker.set_current_job_id(None)",
        "print(job.get_status().value)",
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout.splitlines()[0] == "None"
    assert result.stdout.splitlines()[1] == "failed"


@pytest.mark.usefixtures("queue")
def test_a_worker_beats_while_it_makes_a_run_itself(redis_connection):
    worker = BatchWorker(
        ["default"],
        connection=redis_connection,
        serializer=JSONSerializer,
        job_monitoring_interval=0.05,
    )
    beat_key = queueing.WORKER_BEAT_KEY.format(worker.name)
    assert not redis_connection.exists(beat_key)
    with worker.beating():
        # What a run needs to keep its leases: beats, again and again.
        wait_for(lambda: redis_connection.exists(beat_key), "a beat", 5)
        redis_connection.delete(beat_key)
        wait_for(lambda: redis_connection.exists(beat_key), "another beat", 5)
    redis_connection.delete(beat_key)
    time.sleep(0.2)
    assert not redis_connection.exists(beat_key), "it beats after the run"


@pytest.mark.processes
def test_a_horse_signalled_before_it_has_its_own_group_is_signalled_alone():
    # Just forked, a work horse is still in the worker's process group: a SIGTERM then (a
    # platform's restart) must reach the horse, not the worker and its launcher.
    result = with_a_batch_worker(
        "horse = subprocess.Popen(['sleep', '60'])",
        "worker._horse_pid = horse.pid",
        "worker.kill_horse(signal.SIGTERM)",
        "print(horse.wait(timeout=10))",
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert result.stdout == f"{-signal.SIGTERM}\n"
