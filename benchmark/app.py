"""The shipped app, used from outside as a person uses it: the form over HTTP against the
Procfile's web process, `manage.py generate_users` typed at a shell, the Procfile's workers
started beforehand and waiting for work, as in production.

Every app figure is end to end: from the moment the person acts (the POST is sent, the command
is started) to the moment this process learns that the batch's last chunk committed (ends.py
says how): what the person waits for, counted a little long, never short. The worker's own
time (`started_at` to `finished_at`, which the worker stamps just before that last commit) is
reported beside it. This process reads the scratch database only to see a batch end and check
its outcome (N users made), never to drive the app.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import Permission
from django.urls import Resolver404, resolve, reverse
from rq import Queue

from generator import conf
from generator.models import Batch, User

from . import BenchmarkError
from .browser import Browser
from .ends import BatchEnds, BatchLate
from .processes import PeakSampler, Processes
from .scratch import ScratchRedis


@dataclass(frozen=True)
class BatchRun:
    """One batch from the person's action to its last row committed."""

    batch_id: int
    total: int
    # The person's action (POST sent, command started) to the batch seen finished.
    end_to_end_seconds: float
    # The worker's own time, started_at to finished_at.
    worker_seconds: float
    # The POST's answer, or the command's run until it printed the batch id and exited.
    request_seconds: float

    @property
    def rate(self) -> float:
        return self.total / max(self.end_to_end_seconds, 1e-9)


@dataclass
class Workers:
    """Workers started from the Procfile and idle before the work; their peak RSS once stopped."""

    processes: list[subprocess.Popen[bytes]]
    # ru_maxrss of the busiest worker with its work horses; the first one's by sampling VmHWM.
    peak_rss_kib: int = 0
    sampled_peak_kib: int = 0
    samplers: list[PeakSampler] = field(default_factory=list)


class App:
    """The app's processes on the scratch storage, and one person logged in to its web pages."""

    def __init__(self, *, processes: Processes, redis: ScratchRedis, ends: BatchEnds) -> None:
        self.processes = processes
        self.redis = redis
        self.ends = ends
        self._web: subprocess.Popen[bytes] | None = None
        self._browser: Browser | None = None

    # The web pages ---------------------------------------------------------------------

    def start_web(self, env: dict[str, str]) -> None:
        """Start the web process with `env` and log in through its login form.

        The person's password is hashed twice here (made, then checked), before anything is
        timed.
        """
        self._web, base_url = self.processes.start_web(name="web", env=env)
        password = secrets.token_urlsafe(24)
        user = User.objects.create_user("benchmark", "benchmark@example.com", password=password)
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="generator", codename="add_batch")
        )
        self._browser = Browser(base_url)
        self._browser.log_in(reverse("login"), username=user.get_username(), password=password)

    def stop_web(self) -> None:
        if self._web is not None:
            self.processes.stop(self._web)
        self._web = self._browser = None

    @property
    def browser(self) -> Browser:
        if self._browser is None:
            raise BenchmarkError("The web process is not running.")
        return self._browser

    def generate_form(self, total: int, **extra: str) -> dict[str, str]:
        """The generate form as its page serves it (CSRF token, fresh idempotency key), filled."""
        hidden = self.browser.form_fields(reverse("generator:generate"), having="total")
        return {**hidden, "total": str(total), **extra}

    def post_generate(self, fields: dict[str, str]) -> tuple[int, float, float]:
        """Press the form's button: the batch it redirected to, when the POST was sent
        (`time.perf_counter()`) and the seconds it took to answer."""
        started = time.perf_counter()
        response = self.browser.submit(reverse("generator:generate"), fields)
        seconds = time.perf_counter() - started
        if response.status != 302:
            raise BenchmarkError(
                f"The form answered {response.status}, not a redirect: invalid, or refused by a "
                "limit?"
            )
        try:
            batch_id = int(resolve(urlsplit(response.location).path).kwargs["batch_id"])
        except (Resolver404, KeyError, ValueError):
            raise BenchmarkError(
                f"The form redirected to {response.location}, not a batch."
            ) from None
        return batch_id, started, seconds

    def batch_status(self, batch_id: int) -> dict[str, Any]:
        """The batch as the app reports it (`GET /api/batches/<id>/`)."""
        return self.browser.get_json(reverse("generator:api_batch_detail", args=[batch_id]))

    def form_batch(self, total: int, *, workers: Workers) -> BatchRun:
        """A form POST of `total` users to idle workers, to its last row committed."""
        fields = self.generate_form(total)  # the page the person looks at first: not timed
        self.processes.wait_for_idle_workers(workers.processes, self.redis.connection)
        batch_id, sent, post_seconds = self.post_generate(fields)
        return self.batch_run(
            batch_id, total, acted=sent, request_seconds=post_seconds, workers=workers
        )

    # The command line and the workers ----------------------------------------------------

    def queued_jobs(self) -> int:
        return Queue(conf.queue_name(), connection=self.redis.connection).count

    @contextmanager
    def idle_workers(
        self, count: int = 1, *, name: str, env: dict[str, str] | None = None
    ) -> Iterator[Workers]:
        """`count` Procfile workers on an empty queue, once all wait for work; stopped after.

        Their peak memory is known once they have stopped (see Processes.start_worker).
        """
        self.redis.reset()
        started = [
            self.processes.start_worker(name=f"{name}-worker-{number}", env=env)
            for number in range(1, count + 1)
        ]
        workers = Workers(started)
        try:
            self.processes.wait_for_idle_workers(started, self.redis.connection)
            # The first worker only: it does the whole batch when it is alone, and a sampler
            # per worker would take CPU from the workers it watches.
            workers.samplers = [PeakSampler(started[0].pid)]
            for sampler in workers.samplers:
                sampler.start()
            yield workers
        finally:
            for sampler in workers.samplers:
                sampler.stop()
            # Stopped once back on the queue: a batch's end is seen at its commit, and a fanned
            # out batch's other jobs (empty by then) may still be starting.
            with suppress(BenchmarkError):
                self.processes.wait_for_idle_workers(started, self.redis.connection)
            for process in started:
                self.processes.stop(process)
        workers.peak_rss_kib = max(
            self.processes.wait_with_rusage(process, timeout=60)[1] for process in started
        )
        workers.sampled_peak_kib = max(sampler.peak_kib for sampler in workers.samplers)

    def cli_batch(
        self, total: int, *, name: str, workers: Workers, env: dict[str, str] | None = None
    ) -> BatchRun:
        """`manage.py generate_users N` started as a shell starts it, to the last row committed."""
        env = {"GENERATOR_CLI_MAX_TOTAL": str(max(total, conf.cli_max_total())), **(env or {})}
        started = time.perf_counter()
        command = subprocess.run(
            [sys.executable, "manage.py", "generate_users", str(total)],
            cwd=settings.BASE_DIR,
            env={**self.processes.env, **env},
            capture_output=True,
            timeout=120,
            check=False,
        )
        command_seconds = time.perf_counter() - started
        log_path = self.processes.logs_dir / f"{name}-generate_users.log"
        log_path.write_bytes(command.stdout + command.stderr)
        if command.returncode != 0 or not command.stdout.strip().isdigit():
            raise BenchmarkError(f"generate_users failed: {command.stderr.decode()[-2000:]}")
        return self.batch_run(
            int(command.stdout),
            total,
            acted=started,
            request_seconds=command_seconds,
            workers=workers,
        )

    def batch_run(
        self,
        batch_id: int,
        total: int,
        *,
        acted: float,
        request_seconds: float,
        workers: Workers,
    ) -> BatchRun:
        """Wait for the batch to end; its figures, once N users are checked to be there.

        `acted` is when the person acted, by `time.perf_counter()`.
        """

        def workers_alive() -> None:
            for process in workers.processes:
                if process.poll() is not None:
                    raise BenchmarkError(
                        f"A worker exited during batch {batch_id}: {self.processes.tail(process)}"
                    )

        try:
            seen_finished = self.ends.wait(
                batch_id,
                total=total,
                deadline=time.monotonic() + 120 + total / 1000,
                check=workers_alive,
            )
        except BatchLate as late:
            raise BenchmarkError(f"{late} {self.processes.tail(workers.processes[0])}") from None
        batch = Batch.objects.get(pk=batch_id)
        if batch.status != Batch.Status.FINISHED or not (batch.started_at and batch.finished_at):
            raise BenchmarkError(
                f"Batch {batch_id} is {batch.status}: {self.processes.tail(workers.processes[0])}"
            )
        self.check_created(batch_id, total)
        return BatchRun(
            batch_id=batch_id,
            total=total,
            end_to_end_seconds=seen_finished - acted,
            worker_seconds=(batch.finished_at - batch.started_at).total_seconds(),
            request_seconds=request_seconds,
        )

    def check_created(self, batch_id: int, total: int) -> None:
        """A fast batch that made the wrong number of users is no result."""
        created = User.objects.filter(batch_id=batch_id).count()
        if created != total:
            raise BenchmarkError(f"Batch {batch_id} made {created} users, not {total}.")
