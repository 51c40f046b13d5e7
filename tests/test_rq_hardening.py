"""What an attacker who can write to Redis gets: no code run, in the worker or in the web process.

Each test plants in the tests' real Redis what such an attacker would (a JSON job naming any
function or callback, a pickled payload where django-rq reads without a serializer), then runs the
Procfile's real worker or the real dashboard views, and checks that nothing ran.
"""

from __future__ import annotations

import http.server
import pickle
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.cron import CronScheduler
from rq.exceptions import DeserializationError, StopRequested
from rq.job import Callback, Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import DefaultSerializer, JSONSerializer, resolve_serializer
from rq.utils import now, utcformat
from rq.webhook import Webhook

from generator import queueing, rq_guard, use_cases
from generator.models import Batch, User
from generator.worker import stop_requested_reraise

from . import support
from .conftest import BURST_WORKER, JSON_SERIALIZER, subprocess_env
from .support import RealPickle, WritesAFile, burst_worker

REFUSAL = "refused: generator runs only its own jobs"
DASHBOARDS = ["/django-rq/", "/admin/django_rq/dashboard/"]


def attacker_queue(queue: Queue) -> Queue:
    """A plain rq Queue on the app's Redis: what anyone who can write to it can use."""
    return Queue(queue.name, connection=queue.connection, serializer=JSONSerializer)


def planted_callback(directory: Path, marker: Path) -> str:
    """The dotted path of a function that writes `marker`, in a module under `directory`.

    It stands for any importable function an attacker could name; unlike os.system, it accepts
    the arguments rq calls a callback with, so the test would see it run.
    """
    module = f"planted_{secrets.token_hex(4)}"
    (directory / f"{module}.py").write_text(
        "from pathlib import Path\n\n\n"
        "def write_marker(*args, **kwargs):\n"
        f"    Path({str(marker)!r}).write_text('pwned')\n"
    )
    return f"{module}.write_marker"


def refused_as_failed(queue: Queue, job_id: str) -> str:
    """The failure RQ recorded for the job, checking it is in the failed registry."""
    assert job_id in FailedJobRegistry(queue=queue)
    job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.FAILED
    return job.latest_result().exc_string


# A. The worker runs the app's own job functions, nothing else a job names.


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("function", "arguments"),
    [("os.system", "touch {marker}"), ("subprocess.call", ["touch", "{marker}"])],
    ids=["os.system", "subprocess.call"],
)
def test_the_worker_refuses_a_json_job_naming_any_other_function(
    queue: Queue, tmp_path: Path, function: str, arguments: str | list[str]
):
    marker = tmp_path / "pwned"
    if isinstance(arguments, str):
        argument: str | list[str] = arguments.format(marker=marker)
    else:
        argument = [part.format(marker=marker) for part in arguments]
    job = attacker_queue(queue).enqueue(function, argument)

    worker = burst_worker()

    assert worker.returncode == 0, worker.stderr
    assert not marker.exists()
    reason = f"{REFUSAL}, not {function}"
    assert reason in refused_as_failed(queue, job.id)
    assert f"job {job.id} {reason}" in worker.stderr


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("kind", "function", "arguments"),
    [
        ("success", "generator.jobs.batches_reconcile", ()),
        # A batch that does not exist: the job fails, which is when rq runs on_failure.
        ("failure", "generator.jobs.batch_run", (999_999,)),
    ],
    ids=["on_success", "on_failure"],
)
def test_the_worker_refuses_an_app_job_carrying_a_callback(
    queue: Queue, tmp_path: Path, kind: str, function: str, arguments: tuple[int, ...]
):
    marker = tmp_path / "pwned"
    callback = planted_callback(tmp_path, marker)
    job = attacker_queue(queue).enqueue(function, *arguments, **{f"on_{kind}": Callback(callback)})

    worker = burst_worker(PYTHONPATH=str(tmp_path))

    assert worker.returncode == 0, worker.stderr
    assert not marker.exists()
    reason = f"{REFUSAL}, which take no callbacks, not on_{kind}={callback}"
    assert reason in refused_as_failed(queue, job.id)
    assert f"job {job.id} {reason}" in worker.stderr


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_the_worker_refuses_an_os_system_callback_with_its_name_in_the_reason(queue: Queue):
    job = attacker_queue(queue).enqueue(
        "generator.jobs.batches_reconcile", on_success=Callback("os.system")
    )

    worker = burst_worker()

    reason = f"{REFUSAL}, which take no callbacks, not on_success=os.system"
    assert reason in refused_as_failed(queue, job.id)
    assert reason in worker.stderr


class Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        self.record()

    def do_POST(self) -> None:
        self.record()

    def record(self) -> None:
        Recorder.requests.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def listener() -> Iterator[str]:
    """An HTTP server inside the network, where a planted webhook would send the worker."""
    Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", support.free_port()), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_the_worker_sends_no_webhook_a_planted_job_carries(queue: Queue, listener: str):
    webhooks = [Webhook(f"{listener}/{status}", status) for status in ("finished", "failed")]
    job = attacker_queue(queue).enqueue("generator.jobs.batches_reconcile", webhooks=webhooks)

    worker = burst_worker()

    assert worker.returncode == 0, worker.stderr
    assert Recorder.requests == []
    assert f"{REFUSAL}, which send no webhooks" in refused_as_failed(queue, job.id)


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_the_worker_runs_the_apps_jobs_beside_a_refused_one(queue: Queue, tmp_path: Path):
    marker = tmp_path / "pwned"
    planted = attacker_queue(queue).enqueue("os.system", f"touch {marker}")
    batch = use_cases.batch_submit(requested_by=None, total=120, enforce_limits=False)
    reconcile = queue.enqueue("generator.jobs.batches_reconcile")

    worker = burst_worker()

    assert worker.returncode == 0, worker.stderr
    assert not marker.exists()
    assert planted.id in FailedJobRegistry(queue=queue)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 120
    assert queue.fetch_job(reconcile.id).get_status() == JobStatus.FINISHED


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("field", "planted"),
    [("meta", b"[]"), ("data", b"not json at all")],
    ids=["meta not an object", "data not json"],
)
def test_a_run_flagged_for_the_worker_with_unreadable_data_fails_alone(
    queue: Queue, redis_connection: Redis, field: str, planted: bytes
):
    # The flag that makes a run in the worker's own process is read in the worker itself:
    # whatever is planted beside it must not stop the worker.
    flagged = use_cases.batch_submit(requested_by=None, total=60, enforce_limits=False)
    job_id = queueing.batch_job_id(flagged)
    redis_connection.hset(Job.key_for(job_id), field, planted)
    batch = use_cases.batch_submit(requested_by=None, total=120, enforce_limits=False)

    worker = burst_worker()

    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert job_id in FailedJobRegistry(queue=queue)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    assert User.objects.filter(batch=batch).count() == 120


def test_every_job_the_app_enqueues_or_schedules_is_allowed(redis_connection: Redis):
    scheduler = CronScheduler(connection=redis_connection)
    scheduler.load_config_from_file("generator.cron")
    scheduled = {rq_guard.function_name(cron_job.func) for cron_job in scheduler.get_jobs()}

    assert scheduled == {"generator.jobs.batches_reconcile", "generator.jobs.database_backup"}
    assert {*scheduled, queueing.BATCH_RUN, queueing.BATCH_USERS_DELETE} <= (
        rq_guard.allowed_names()
    )


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_the_batch_worker_will_not_start_with_pickle(queue: Queue):
    # The Procfile's command line without its --serializer: rqworker's default is pickle.
    command = [part for part in BURST_WORKER if part not in ("--serializer", JSON_SERIALIZER)]
    assert len(command) == len(BURST_WORKER) - 2

    worker = subprocess.run(
        command,
        cwd=settings.BASE_DIR,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert worker.returncode != 0
    assert "BatchWorker reads JSON only" in worker.stderr


# B. No pickle where the web process reads Redis.


@pytest.mark.parametrize(
    "asked_for", [None, "pickle", DefaultSerializer, "rq.serializers.DefaultSerializer"]
)
def test_rq_reads_json_whatever_serializer_a_caller_names_or_omits(asked_for: object, tmp_path):
    serializer = resolve_serializer(asked_for)  # type: ignore[arg-type]
    marker = tmp_path / "unpickled"

    assert serializer.dumps({"batch_id": 1}) == b'{"batch_id": 1}'
    with pytest.raises(UnicodeDecodeError):
        serializer.loads(RealPickle.dumps(WritesAFile(marker)))
    assert not marker.exists()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_django_rqs_plain_rqworker_command_runs_no_planted_pickle(queue: Queue, tmp_path: Path):
    # django-rq's documented command line, no --serializer, no worker class: rq's defaults.
    marker = tmp_path / "pwned-by-a-plain-worker"
    job = Job.create(
        "generator.jobs.batches_reconcile",
        args=(WritesAFile(marker),),
        connection=queue.connection,
        serializer=RealPickle,
        origin="default",
    )
    job.save()
    queue.push_job_id(job.id)

    worker = subprocess.run(
        [sys.executable, "manage.py", "rqworker", "default", "--burst"],
        cwd=settings.BASE_DIR,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert worker.returncode == 0, worker.stderr
    assert not marker.exists()


def plant_job(connection: Redis, marker: Path, **options: object) -> Job:
    """A job of the app's whose meta is a pickle that writes `marker` when loaded."""
    job = Job.create(
        "generator.jobs.batches_reconcile",
        connection=connection,
        serializer=JSONSerializer,
        origin="default",
        **options,
    )
    job.save()
    connection.hset(job.key, "meta", pickle.dumps(WritesAFile(marker)))
    return job


@pytest.mark.django_db
@pytest.mark.parametrize("root", DASHBOARDS)
def test_clearing_failed_jobs_runs_no_pickled_meta(
    admin_client: Client, queue: Queue, tmp_path: Path, root: str
):
    marker = tmp_path / "pwned"
    job = plant_job(queue.connection, marker, status=JobStatus.FAILED)
    FailedJobRegistry(queue=queue).add(job, ttl=3600, exc_string="boom")

    confirm = admin_client.get(f"{root}queues/0/failed/clear/")
    response = admin_client.post(f"{root}queues/0/failed/clear/")

    assert not marker.exists()
    assert confirm.status_code == 200
    assert response.status_code == 302
    assert response["Location"] == root
    assert not Job.exists(job.id, connection=queue.connection)
    assert FailedJobRegistry(queue=queue).count == 0


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["stats.json", "queues/0/details/", "queues/0/started/", ""])
@pytest.mark.parametrize("root", DASHBOARDS)
def test_counting_an_abandoned_job_runs_neither_its_pickle_nor_its_failure_callback(
    admin_client: Client,
    queue: Queue,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    root: str,
    page: str,
):
    # The dashboard counts started jobs; rq then fails those whose worker is long gone,
    # loading each one and running its failure callback, in the web process.
    pickled, called = tmp_path / "unpickled", tmp_path / "called"
    monkeypatch.syspath_prepend(str(tmp_path))
    callback = planted_callback(tmp_path, called)
    job = plant_job(
        queue.connection, pickled, status=JobStatus.STARTED, on_failure=Callback(callback)
    )
    started = StartedJobRegistry(queue=queue)
    queue.connection.zadd(started.key, {f"{job.id}:planted": 1})

    response = admin_client.get(f"{root}{page}")

    assert response.status_code == 200
    assert not pickled.exists()
    assert not called.exists()
    # rq's own cleanup did run: the abandoned job is now a failed one.
    assert job.id in FailedJobRegistry(queue=queue)


@pytest.mark.django_db
@pytest.mark.parametrize("root", DASHBOARDS)
def test_a_workers_page_runs_no_pickle_in_its_current_job(
    admin_client: Client, queue: Queue, tmp_path: Path, root: str
):
    marker = tmp_path / "pwned"
    job = plant_job(queue.connection, marker, status=JobStatus.STARTED)
    key = "rq:worker:planted"
    heartbeat = utcformat(now())
    queue.connection.hset(
        key,
        mapping={
            "queues": "default",
            "current_job": job.id,
            "state": "busy",
            "birth": heartbeat,
            "last_heartbeat": heartbeat,
            "hostname": "elsewhere",
            "pid": 1,
        },
    )
    queue.connection.sadd("rq:workers", key)
    queue.connection.sadd("rq:workers:default", key)

    listing = admin_client.get(f"{root}workers/0/")
    response = admin_client.get(f"{root}workers/0/{key}/")

    assert not marker.exists()
    assert listing.status_code == 200
    assert response.status_code == 200
    assert job.id in response.content.decode()


def wrapped_by_rq(cause: BaseException) -> BaseException:
    """`cause` as RQ's Job wraps what interrupts its lazy read of a job's data."""
    try:
        try:
            raise cause
        except Exception as error:
            raise DeserializationError() from error
    except DeserializationError as wrapped:
        return wrapped


def test_a_stop_requested_while_rq_reads_a_job_still_stops_the_worker() -> None:
    # RQ's SIGTERM handler raises StopRequested wherever the worker is, RQ's own code included.
    with pytest.raises(StopRequested):
        stop_requested_reraise(wrapped_by_rq(StopRequested()))
    with pytest.raises(StopRequested):
        stop_requested_reraise(StopRequested())
    # Any other error is the caller's to log.
    stop_requested_reraise(wrapped_by_rq(ValueError("bad data")))
    stop_requested_reraise(RedisError("down"))
