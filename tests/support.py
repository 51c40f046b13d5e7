"""Shared support for the tests that run the app for real: processes, a tiny HTTP browser,
and the Procfile platform that Chromium drives. Test modules import from here, never from
each other."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
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


def procfile() -> dict[str, str]:
    lines = (Path(settings.BASE_DIR) / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url}: the web process exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer within {timeout} s")


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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


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
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
}


@contextmanager
def browser_platform_running(
    redis: Redis, logs_dir: Path, env: dict[str, str]
) -> Iterator[Platform]:
    """Release, then gunicorn and rqworker from the Procfile, with `env` (its PORT included)."""
    redis.flushdb()
    # Only this process runs Playwright's event loop: the app must keep Django's guard.
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    commands = procfile()
    run = {"cwd": settings.BASE_DIR, "env": env}
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], check=True, **run
    )
    subprocess.run(["bash", "-c", commands["release"]], check=True, capture_output=True, **run)
    logs = {name: (logs_dir / f"{name}.log").open("w") for name in ("web", "worker")}
    web, worker = (
        subprocess.Popen(
            ["bash", "-c", f"exec {commands[name]}"],
            stdout=logs[name],
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run,
        )
        for name in ("web", "worker")
    )
    started = Platform(f"http://127.0.0.1:{env['PORT']}", web, worker, redis)
    try:
        wait_until_up(f"{started.base_url}/healthz/", web)
        wait_for(started.worker_is_idle, "the worker is ready", timeout=30)
        yield started
    finally:
        for process in (web, worker):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for name, log in logs.items():
            log.close()
            print(f"--- {name} log ---\n{(logs_dir / f'{name}.log').read_text()}")
        redis.flushdb()


def chromium_path() -> str:
    """Debian's Chromium (or CHROMIUM_PATH), never a browser downloaded by Playwright."""
    path = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"No Chromium at {path}. Install it (apt install chromium) or set CHROMIUM_PATH; "
            "scripts/test does both."
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


class WritesAFile:
    """What an attacker who can write to Redis would put in a pickled field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path, str]]:
        return (Path.write_text, (self.path, "pwned"))
