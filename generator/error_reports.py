"""Error pages and reports that never show a password, debug page included."""

from __future__ import annotations

import re
from collections.abc import ItemsView
from typing import Any

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter

SUBSTITUTE = SafeExceptionReporterFilter.cleansed_substitute
# scheme://user:password@host -> scheme://********@host (redis://, postgres://, rediss://, ...)
URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^@/\s'\"]+@", re.IGNORECASE)
# ?password=... in a URL's query, password=... in a libpq connection string.
KEYED_PASSWORD = re.compile(r"(?P<key>\b(?:password|passwd|pwd)=)[^&\s'\"]+", re.IGNORECASE)


def credentials_hide(text: str) -> str:
    text = URL_CREDENTIALS.sub(lambda match: f"{match['scheme']}{SUBSTITUTE}@", text)
    return KEYED_PASSWORD.sub(lambda match: f"{match['key']}{SUBSTITUTE}", text)


class _Shown:
    """A value as the debug page prints it (its repr), with the credentials taken out."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class CredentialsHidingFilter(SafeExceptionReporterFilter):
    """Django's filter, in debug mode too, and for passwords that are not in a named setting.

    Django hides settings named like KEY or PASS, but not the password inside DATABASE_URL or
    REDIS_URL, and in debug mode it shows every variable and POST field as it is. This filter
    always applies `sensitive_variables` and `sensitive_post_parameters` (a laptop's debug page
    gets shared too), hides by name and by dictionary key in the traceback's variables as in the
    settings (a driver's `conn_params`, redis-py's `auth_args`), and takes credentials out of
    every URL and connection string it shows.
    """

    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|PWD|SIGNATURE|HTTP_COOKIE|DSN|CONNINFO", flags=re.I
    )

    def is_active(self, request: HttpRequest | None) -> bool:
        return True

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        value = super().cleanse_setting(key, value)
        # Exactly str: what Django already hid comes back as a lazy stand-in, left as it is.
        if type(value) is str:
            return credentials_hide(value)
        return value

    def get_traceback_frame_variables(
        self, request: HttpRequest | None, tb_frame: Any
    ) -> ItemsView[str, Any]:
        shown: dict[str, Any] = {}
        for name, value in super().get_traceback_frame_variables(request, tb_frame):
            value = self.cleanse_setting(name, value)
            try:
                text = repr(value)
            except Exception:  # a broken __repr__ is the debug page's problem, not ours
                shown[name] = value
                continue
            hidden = credentials_hide(text)
            shown[name] = _Shown(hidden) if hidden != text else value
        return shown.items()
