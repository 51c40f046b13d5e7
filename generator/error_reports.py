"""Error pages and reports that never show a password written inside a URL."""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter

# scheme://user:password@host -> scheme://********@host (redis://, postgres://, rediss://, ...)
URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^@/\s'\"]+@", re.IGNORECASE)


def url_credentials_hide(text: str) -> str:
    substitute = SafeExceptionReporterFilter.cleansed_substitute
    return URL_CREDENTIALS.sub(lambda match: f"{match['scheme']}{substitute}@", text)


class _Shown:
    """A value as the debug page prints it (its repr), with the credentials taken out."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class CredentialsHidingFilter(SafeExceptionReporterFilter):
    """Django's filter hides settings named like KEY or PASS, but not DATABASE_URL's password.

    This one also takes the user:password part out of every URL in settings, the request's
    META (the development server copies the environment there) and the traceback's variables.
    """

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        # Exactly str: what Django already hid comes back as a lazy stand-in, left as it is.
        if type(value) is str:
            return url_credentials_hide(value)
        return value

    def get_traceback_frame_variables(
        self, request: HttpRequest | None, tb_frame: Any
    ) -> list[tuple[str, Any]]:
        shown = []
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            try:
                text = repr(value)
            except Exception:  # a broken __repr__ is the debug page's problem, not ours
                shown.append((name, value))
                continue
            hidden = url_credentials_hide(text)
            shown.append((name, _Shown(hidden) if hidden != text else value))
        return shown
