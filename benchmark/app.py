"""The shipped app, used from outside as a person uses it: the form over HTTP against the
Procfile's web process, `manage.py generate_users` typed at a shell, the Procfile's workers.

This process reads the scratch database only to check an outcome (N users made), never to drive
the app.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
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
from .processes import PeakSampler, Processes
from .scratch import ScratchRedis


@dataclass
class CliRun:
    """One batch through the CLI and burst workers: its timings and the first worker's memory."""

    batch_id: int
    total: int
    seconds: float
    wall_seconds: float
    peak_rss_kib: int
    proc_peak_kib: int

    @property
    def rate(self) -> float:
        return self.total / max(self.seconds, 1e-9)


class App:
    """The app's processes on the scratch storage, and one person logged in to its web pages."""

    def __init__(self, *, processes: Processes, redis: ScratchRedis) -> None:
        self.processes = processes
        self.redis = redis
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

    def generate_form(self, total: int) -> dict[str, str]:
        """The generate form as its page serves it (CSRF token, fresh idempotency key), filled."""
        hidden = self.browser.form_fields(reverse("generator:generate"), having="total")
        return {**hidden, "total": str(total)}

    def post_generate(self, fields: dict[str, str]) -> tuple[int, float]:
        """Press the form's button: the batch it redirected to, and the seconds the POST took."""
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
        return batch_id, seconds

    def batch_status(self, batch_id: int) -> dict[str, Any]:
        """The batch as the app reports it (`GET /api/batches/<id>/`)."""
        return self.browser.get_json(reverse("generator:api_batch_detail", args=[batch_id]))

    # The command line and the workers ----------------------------------------------------

    def queued_jobs(self) -> int:
        return Queue(conf.queue_name(), connection=self.redis.connection).count

    def start_idle_worker(self, *, name: str) -> subprocess.Popen[bytes]:
        """A worker (not in burst mode) on an empty queue, once it waits for work."""
        self.redis.reset()
        worker = self.processes.start_worker(burst=False, name=name)
        self.processes.wait_for_idle_worker(worker, self.redis.connection)
        return worker

    def cli_batch(
        self, total: int, *, name: str, workers: int = 1, env: dict[str, str] | None = None
    ) -> CliRun:
        """`generate_users N`, then burst workers until the queue is empty; checks N were made.

        The peak memory is the first worker's (with its work horses).
        """
        self.redis.reset()
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
        log_path = self.processes.logs_dir / f"{name}-generate_users.log"
        log_path.write_bytes(command.stdout + command.stderr)
        if command.returncode != 0 or not command.stdout.strip().isdigit():
            raise BenchmarkError(f"generate_users failed: {command.stderr.decode()[-2000:]}")
        batch_id = int(command.stdout)
        started_workers = [
            self.processes.start_worker(burst=True, name=f"{name}-worker-{number}", env=env)
            for number in range(1, workers + 1)
        ]
        worker = started_workers[0]
        sampler = PeakSampler(worker.pid)
        sampler.start()
        try:
            exits = [
                self.processes.wait_with_rusage(each, timeout=120 + total / 1000)
                for each in started_workers
            ]
        finally:
            sampler.stop()
        wall_seconds = time.perf_counter() - started
        for each, (returncode, _) in zip(started_workers, exits, strict=True):
            if returncode != 0:
                raise BenchmarkError(
                    f"A burst worker exited with {returncode}: {self.processes.tail(each)}"
                )
        batch = Batch.objects.get(pk=batch_id)
        if batch.status != Batch.Status.FINISHED or not (batch.started_at and batch.finished_at):
            raise BenchmarkError(
                f"Batch {batch_id} is {batch.status}: {self.processes.tail(worker)}"
            )
        self.check_created(batch_id, total)
        return CliRun(
            batch_id=batch_id,
            total=total,
            seconds=(batch.finished_at - batch.started_at).total_seconds(),
            wall_seconds=wall_seconds,
            peak_rss_kib=exits[0][1],
            proc_peak_kib=sampler.peak_kib,
        )

    def check_created(self, batch_id: int, total: int) -> None:
        """A fast batch that made the wrong number of users is no result."""
        created = User.objects.filter(batch_id=batch_id).count()
        if created != total:
            raise BenchmarkError(f"Batch {batch_id} made {created} users, not {total}.")
