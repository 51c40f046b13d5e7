"""The app's processes, started from the Procfile's lines, and what they cost in memory.

The web process is the Procfile's `web:` line (gunicorn), each worker its `worker:` line, with
started before the work it is timed on and left waiting for it, as in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

from django.conf import settings
from redis import Redis
from rq import Worker

from . import BenchmarkError
from .procfile import process_command

# Runs a command as its child, reaps it with wait4 and writes "<exit code> <ru_maxrss KiB>".
# Linux counts in a child's ru_maxrss the image it was forked from, up to its exec: forked
# from this process (hundreds of MB after the floor's rows) the worker would be charged for
# it. Forked from this tiny interpreter instead, the figure is the worker's own and that of
# the work horses it waited for.
LAUNCHER = """
import os, signal, sys
path, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execvp(argv[0], argv)
# Signals go to the whole process group: the worker gets them; this one waits for it.
for number in (signal.SIGTERM, signal.SIGINT):
    signal.signal(number, signal.SIG_IGN)
_, status, usage = os.wait4(pid, 0)
with open(path, "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Processes:
    """The subprocesses of one run: each in its own process group, with its own log file."""

    def __init__(self, *, env: dict[str, str], logs_dir: Path) -> None:
        self.env = env
        self.logs_dir = logs_dir
        self.running: list[subprocess.Popen[bytes]] = []
        self.log_paths: dict[int, Path] = {}
        self.rusage_paths: dict[int, Path] = {}

    def start(
        self, argv: list[str], *, name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process, its output to <name>.log, in its own process group."""
        with (self.logs_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=settings.BASE_DIR,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                # Ctrl-C reaches only us, and we stop the process and its children together.
                start_new_session=True,
            )
        self.log_paths[process.pid] = Path(log.name)
        self.running.append(process)
        return process

    def start_web(self, *, name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
        """The Procfile's web process on a free local port, once it answers; and its base URL."""
        port = free_port()
        process = self.start(process_command("web"), name=name, env={**env, "PORT": str(port)})
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchmarkError(f"The web process exited at start: {self.tail(process)}")
            try:
                with urllib.request.urlopen(f"{base_url}/healthz/", timeout=1):
                    return process, base_url
            except OSError:
                time.sleep(0.1)
        raise BenchmarkError(f"The web process did not answer within 60 s: {self.tail(process)}")

    def start_worker(
        self, *, name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """The Procfile's worker process, exactly as its line starts it.

        Started through a small launcher that reaps it and writes down its peak RSS: see
        LAUNCHER for why the benchmark cannot ask the kernel about its own child.
        """
        rusage_path = self.logs_dir / f"{name}.rusage"
        rusage_path.unlink(missing_ok=True)
        worker = process_command("worker")
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(rusage_path)]
        process = self.start([*launcher, *worker], name=name, env=env)
        self.rusage_paths[process.pid] = rusage_path
        return process

    def wait_for_idle_workers(self, processes: list[subprocess.Popen[bytes]], redis: Redis) -> None:
        """Wait until every worker is registered and blocked on the queue, waiting for work."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise BenchmarkError(f"A worker exited at start: {self.tail(process)}")
            workers = Worker.all(connection=redis)
            if (
                len(workers) >= len(processes)
                and all(w.get_state() == "idle" for w in workers)
                and blocked_on_queues(redis) >= len(processes)
            ):
                return
            time.sleep(0.05)
        raise BenchmarkError(
            f"The workers were not idle within {START_SECONDS} s: {self.tail(processes[0])}"
        )

    def wait_with_rusage(
        self, process: subprocess.Popen[bytes], *, timeout: float
    ) -> tuple[int, int]:
        """Wait for a worker to exit; its exit code and peak RSS in KiB, work horses included."""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"The worker still runs after {timeout:.0f} s.") from None
        try:
            returncode, peak_rss_kib = self.rusage_paths[process.pid].read_text().split()
        except (OSError, ValueError):
            raise BenchmarkError(f"The worker's launcher died: {self.tail(process)}") from None
        return int(returncode), int(peak_rss_kib)

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM (a warm shutdown for a worker, a graceful one for gunicorn), then SIGKILL."""
        if process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop_all(self) -> None:
        """Stop every subprocess this run started that is still running."""
        for process in self.running:
            self.stop(process)

    def tail(self, process: subprocess.Popen[bytes]) -> str:
        """The end of a subprocess's log, for an error message."""
        path = self.log_paths[process.pid]
        return f"(log {path})\n" + path.read_text(errors="replace")[-3000:]


class PeakSampler(threading.Thread):
    """A second source for the peak: polls VmHWM of a process's descendants in /proc."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            for pid in descendants_of(self.pid):
                self.peak_kib = max(self.peak_kib, vm_hwm_kib(pid))
            self._stopped.wait(0.02)

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def blocked_on_queues(redis: Redis) -> int:
    """How many clients of the run's Redis DB wait in a blocking pop, as an idle worker does.

    RQ says "idle" already when a job ends, before the worker's own work after it (its
    reconcile, a few database queries): a POST sent then would wait for that, not for the
    worker's wake.
    """
    db = redis.connection_pool.connection_kwargs.get("db", 0)
    return sum(
        1
        for client in redis.client_list()
        if client.get("cmd") in BLOCKING_POPS and int(client.get("db", -1)) == db
    )


BLOCKING_POPS = {"blpop", "blmove", "brpoplpush", "bzpopmin"}


def children_of(pid: int) -> list[int]:
    """The direct children of a process, from /proc (empty when it is gone)."""
    children = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):  # the process may exit while we read
            children += [int(child) for child in path.read_text().split()]
    return children


def descendants_of(pid: int) -> list[int]:
    """The children of a process, their children, and so on."""
    found, pending = [], children_of(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending += children_of(child)
    return found


def vm_hwm_kib(pid: int) -> int:
    """A process's peak resident set size so far in KiB, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
