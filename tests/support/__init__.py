"""Shared support for the tests that run the app for real: processes, a tiny HTTP browser,
and the Procfile platform that Chromium drives. Test modules import from here, never from
each other."""

from __future__ import annotations

import ast
import contextlib
import http.cookiejar
import json
import os
import pickle
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings
from django.test import Client
from redis import Redis
from rq import Worker

from generator.models import User

if TYPE_CHECKING:
    from playwright.sync_api import Page

PASSWORD = "a long enough test password"
DEADLINE_SECONDS = 90
JSON_SERIALIZER = "rq.serializers.JSONSerializer"
# The venv's bin first, as on a platform where `python` and `gunicorn` are the app's own.
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def procfile() -> dict[str, str]:
    lines = (Path(settings.BASE_DIR) / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def poll[T](
    condition: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    sleep: Callable[[float], object] = time.sleep,
) -> T | None:
    """`condition`'s first true answer, asked every `interval` s; None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (answer := condition()):
        if time.monotonic() > deadline:
            return None
        sleep(interval)
    return answer


def wait_for[T](
    condition: Callable[[], T],
    what: str,
    timeout: float = DEADLINE_SECONDS,
    *,
    explain: Callable[[], object] | None = None,
    interval: float = 0.05,
    sleep: Callable[[float], object] = time.sleep,
) -> T:
    """Wait until `condition` answers something true, and return it.

    After `timeout` s the test fails, saying `what` it waited for and, if given, `explain()`
    (the processes' logs, the rows as they are). An assertion in `condition` fails it at once.
    """
    answer = poll(condition, timeout, interval=interval, sleep=sleep)
    if answer is None:
        details = f"\n{explain()}" if explain is not None else ""
        pytest.fail(f"timed out after {timeout} s waiting until {what}{details}")
    return answer


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a real web or worker process that shares the test database and Redis."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database_url = f"sqlite:///{database['NAME']}"
    else:
        host, port = database["HOST"] or "localhost", database["PORT"] or 5432
        database_url = (
            f"postgres://{database['USER']}:{database['PASSWORD']}@{host}:{port}/{database['NAME']}"
        )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "site_config.settings",
        "GENERATOR_ENV_FILE": "",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "tests-only-not-secret",
        "DJANGO_HTTPS": "false",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.TEST_REDIS_URL,
        "PYTHONUNBUFFERED": "1",
        "PATH": VENV_PATH,
    }
    env.update(extra)
    return env


# The Procfile's worker in burst mode: it drains the queue, then exits. Its line holds no shell
# syntax, so it splits into the very arguments a platform's shell would pass.
BURST_WORKER = [*shlex.split(procfile()["worker"]), "--burst"]


def burst_worker(timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """BURST_WORKER as a real process with `env` added, run until the queue is empty."""
    return subprocess.run(
        BURST_WORKER,
        cwd=settings.BASE_DIR,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_process(
    name: str, env: dict[str, str], log_path: Path, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """The Procfile's `name` process (with `extra_args`), started as a platform starts it.

    Through bash, as the Procfile's `${PORT:-8000}` needs; in a session of its own, so that
    stop_process reaches its children (gunicorn's workers, RQ's work horse) too.
    """
    command = shlex.join(extra_args)
    with log_path.open("w") as log:
        return subprocess.Popen(
            ["bash", "-c", f"exec {procfile()[name]} {command}".rstrip()],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
    """Send `sig` to the process's whole session, unless it has ended, and wait for it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    process.wait(timeout=timeout)


def collect_static(env: dict[str, str]) -> None:
    """What a platform's build does before gunicorn serves (WhiteNoise's manifest)."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=settings.BASE_DIR,
        env=env,
        check=True,
    )


def run_at_once(target: Callable[[], object], count: int) -> None:
    """Run `target` in `count` threads at once, and wait for them all."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """Just enough of a browser: cookies, CSRF tokens from forms, JSON."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> tuple[str, str]:
        with self.opener.open(self.base_url + path, timeout=10) as response:
            return response.geturl(), response.read().decode()

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[str, str]:
        _, page = self.get(path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token}).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, headers={"Referer": self.base_url + path}
        )
        with self.opener.open(request, timeout=10) as response:
            return response.geturl(), response.read().decode()

    def get_json(self, path: str) -> dict:
        return json.loads(self.get(path)[1])


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    def answers() -> bool:
        assert process.poll() is None, f"{url}: the web process exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            return False

    wait_for(answers, f"{url} answers", timeout, interval=0.1)


@contextmanager
def procfile_running(
    env: dict[str, str], logs_dir: Path, names: Sequence[str] = ("web", "worker")
) -> Iterator[dict[str, subprocess.Popen]]:
    """The Procfile as a platform runs it: the build and `release`, then the `names` processes.

    A web process is waited for at `env`'s PORT. Each logs to logs_dir/<name>.log; at the end
    all are killed and their logs printed.
    """
    collect_static(env)
    subprocess.run(
        ["bash", "-c", procfile()["release"]],
        cwd=settings.BASE_DIR,
        env=env,
        check=True,
        capture_output=True,
    )
    started: dict[str, subprocess.Popen] = {}
    try:
        for name in names:
            started[name] = start_process(name, env, logs_dir / f"{name}.log")
        if "web" in started:
            wait_until_up(f"http://127.0.0.1:{env['PORT']}/healthz/", started["web"])
        yield started
    finally:
        for process in started.values():
            stop_process(process)
        for name in started:
            print(f"--- {name} log ---\n{(logs_dir / f'{name}.log').read_text()}")


def session_browser(base_url: str, user: User) -> Browser:
    """A browser already logged in as `user` (a session made directly, no password hashing)."""
    client = Client()
    client.force_login(user)
    browser = Browser(base_url)
    host = urllib.parse.urlsplit(base_url).hostname
    browser.cookies.set_cookie(
        http.cookiejar.Cookie(
            0,
            settings.SESSION_COOKIE_NAME,
            client.cookies[settings.SESSION_COOKIE_NAME].value,
            None,
            False,
            host,
            False,
            False,
            "/",
            True,
            False,
            None,
            False,
            None,
            None,
            {},
        )
    )
    # The CSRF cookie comes with the first page, as in a browser that has shown the app before.
    browser.get("/generate/")
    return browser


# The browser platform's settings: small chunks make many commits, so a big batch runs long
# enough to be watched and cancelled.
CHUNK_SIZE = 50
MAX_TOTAL = 100_000
MIN_TOTAL = 50
PAGE_SIZE = 50
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"


@dataclass
class Platform:
    """The app served for real: gunicorn and rqworker, as the Procfile starts them."""

    base_url: str
    web: subprocess.Popen
    worker: subprocess.Popen
    redis: Redis

    @contextmanager
    def worker_paused(self) -> Iterator[None]:
        """Freeze the worker (and its work horse) with SIGSTOP, so the page is seen first."""
        os.killpg(self.worker.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.worker.pid, signal.SIGCONT)

    def worker_is_idle(self) -> bool:
        workers = Worker.all(connection=self.redis)
        return bool(workers) and all(worker.get_state() == "idle" for worker in workers)


# What the browser platform's processes are told, besides the database, Redis and port.
BROWSER_PLATFORM_ENV = {
    "WEB_CONCURRENCY": "2",
    "GENERATOR_CHUNK_SIZE": str(CHUNK_SIZE),
    "GENERATOR_MIN_TOTAL": str(MIN_TOTAL),
    "GENERATOR_MAX_TOTAL": str(MAX_TOTAL),
    "GENERATOR_PAGE_SIZE": str(PAGE_SIZE),
    "GENERATOR_FANOUT_THRESHOLD": str(10 * MAX_TOTAL),
    "GENERATOR_MAX_USERS_PER_DAY": str(100 * MAX_TOTAL),
}


@contextmanager
def browser_platform_running(
    redis: Redis, logs_dir: Path, env: dict[str, str]
) -> Iterator[Platform]:
    """Release, then gunicorn and rqworker from the Procfile, with `env` (its PORT included)."""
    redis.flushdb()
    # Only this process runs Playwright's event loop: the app must keep Django's guard.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    try:
        with procfile_running(env, logs_dir) as processes:
            base_url = f"http://127.0.0.1:{env['PORT']}"
            started = Platform(base_url, processes["web"], processes["worker"], redis)
            wait_for(started.worker_is_idle, "the worker is ready", timeout=30)
            yield started
    finally:
        redis.flushdb()


def chromium_path() -> str:
    """Debian's Chromium (or CHROMIUM_PATH), never a browser downloaded by Playwright."""
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"No Chromium at {path}. Install it (apt install chromium) or set CHROMIUM_PATH; "
            "scripts/test with no arguments does both (with arguments, it only finds it)."
        )
    return path


def screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"


def log_in(page: Page, person: User) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(person.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def log_in_directly(page: Page, user: User, base_url: str) -> None:
    """Give the browser a session for `user` made in the database: no password, no form."""
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": base_url,
            }
        ]
    )


class RealPickle:
    """A serializer that really pickles, for planting what an attacker would.

    rq's own DefaultSerializer no longer does in a process where the app has started.
    """

    @staticmethod
    def dumps(value: object) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> object:
        raise AssertionError("the tests only plant pickles; they never read one")


class WritesAFile:
    """What an attacker who can write to Redis would put in a pickled field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path, str]]:
        return (Path.write_text, (self.path, "pwned"))


def bare_environment(**env: str) -> dict[str, str]:
    """A platform's environment: none of our variables but `env`, and no .env file."""
    ours = ("DJANGO_", "GENERATOR_", "DATABASE_", "REDIS_", "RQ_", "DYNO", "SENTRY_")
    clean = {key: value for key, value in os.environ.items() if not key.startswith(ours)}
    return {
        **clean,
        "DJANGO_SETTINGS_MODULE": "site_config.settings",
        "GENERATOR_ENV_FILE": "",
        "PATH": VENV_PATH,
        **env,
    }


def manage(*arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`manage.py` with the real settings in a bare environment plus `env`."""
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=settings.BASE_DIR,
        env=bare_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


ENVIRONMENT_READERS = {"os.environ.get", "os.getenv"}


def environment_variables_the_settings_read() -> dict[str, str]:
    """Each variable site_config/settings.py reads, and what reads it (`env_int`, ...).

    Found in the code, not the text: a name in a comment or a docstring is no read.
    """
    tree = ast.parse((Path(settings.BASE_DIR) / "site_config" / "settings.py").read_text())
    readers = set(ENVIRONMENT_READERS)
    # The module's own helpers (env_int, ...): functions that read the variable their first
    # argument names.
    for function in tree.body:
        if not (isinstance(function, ast.FunctionDef) and function.args.args):
            continue
        parameter = function.args.args[0].arg
        for call in ast.walk(function):
            if (
                isinstance(call, ast.Call)
                and ast.unparse(call.func) in ENVIRONMENT_READERS
                and call.args
                and isinstance(call.args[0], ast.Name)
                and call.args[0].id == parameter
            ):
                readers.add(function.name)
    reads: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in readers and node.args:
            name, reader = node.args[0], ast.unparse(node.func)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            name, reader = node.slice, "os.environ[]"
        else:
            continue
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            reads[name.value] = reader
    return reads
