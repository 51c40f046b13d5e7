"""Just enough of a browser to use the app as a person does, over real HTTP.

It keeps cookies, reads a form's hidden fields (the CSRF token, the idempotency key the page
carries) from the page before posting it, sends the Origin header a browser sends, and does not
follow redirects, so that a POST is timed alone and its Location read.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlsplit

from . import BenchmarkError

TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Response:
    status: int
    location: str
    body: str


class FormFields(HTMLParser):
    """The hidden fields of every form on a page, and the names of all its fields."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[set[str], dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "form":
            self.forms.append((set(), {}))
            return
        attributes = dict(attrs)
        name = attributes.get("name")
        if tag not in {"input", "select", "textarea"} or not name or not self.forms:
            return
        names, hidden = self.forms[-1]
        names.add(name)
        if tag == "input" and attributes.get("type") == "hidden":
            hidden[name] = attributes.get("value") or ""


class Browser:
    """One person's browser against one base URL (http://host:port)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise BenchmarkError(f"The browser speaks plain HTTP to the web process: {base_url}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host, self.port = parts.hostname, parts.port or 80
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, fields: dict[str, str] | None = None) -> Response:
        """One request on a fresh connection, as the web process closes each one."""
        headers = {"Accept": "text/html,application/json"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if fields is not None:
            body = urlencode(fields)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Origin"] = self.origin
        connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_SECONDS)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
        except OSError as exc:
            raise BenchmarkError(
                f"{method} {path}: the web process did not answer ({exc})."
            ) from exc
        finally:
            connection.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Response(response.status, response.headers.get("Location", ""), text)

    def get_page(self, path: str) -> str:
        """A page that must answer 200."""
        response = self.request("GET", path)
        if response.status != 200:
            raise BenchmarkError(f"GET {path} answered {response.status}, not 200.")
        return response.body

    def get_json(self, path: str) -> Any:
        response = self.request("GET", path)
        if response.status != 200:
            raise BenchmarkError(f"GET {path} answered {response.status}: {response.body[:500]}")
        return json.loads(response.body)

    def form_fields(self, path: str, *, having: str) -> dict[str, str]:
        """The hidden fields of the form on the page at `path` that has a field `having`."""
        parser = FormFields()
        parser.feed(self.get_page(path))
        for names, hidden in parser.forms:
            if having in names:
                return hidden
        raise BenchmarkError(f"The page {path} has no form with a {having!r} field.")

    def submit(self, path: str, fields: dict[str, str]) -> Response:
        """POST a form already fetched (see form_fields) and return the answer, unfollowed."""
        return self.request("POST", path, fields)

    def log_in(self, path: str, *, username: str, password: str) -> None:
        """Log in through the login form, as a person does."""
        hidden = self.form_fields(path, having="username")
        response = self.submit(path, {**hidden, "username": username, "password": password})
        if response.status != 302:
            raise BenchmarkError(f"Logging in answered {response.status}, not a redirect.")
