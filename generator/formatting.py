"""Figures as people read them: one place decides how counts, speeds, durations and dates look."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import dateformat, timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

NOTHING = "\N{EN DASH}"
# One format on every page: ISO-like date order, no month names to translate, and the zone
# spelled out because the server's clock, not the reader's, decides it.
DATE_FORMAT = "Y-m-d H:i:s T"


def thousands(count: int | None) -> str:
    """A count with thousands separators (200,000); never used for ids, which stay as typed."""
    return NOTHING if count is None else f"{count:,}"


def speed(users_per_second: float | None) -> str:
    """17,989 users/s; one decimal only where it still says something (4.5 users/s)."""
    if users_per_second is None:
        return NOTHING
    places = 0 if users_per_second >= 100 else 1
    return f"{users_per_second:,.{places}f} users/s"


def duration(value: timedelta | float | None) -> str:
    """Seconds below a minute (4.20 s), minutes and seconds above (2 min 5 s), hours past that."""
    if value is None:
        return NOTHING
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if round(seconds, 2) < 60:
        return f"{seconds:.2f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours:,} h {minutes} min"


def timestamp(moment: datetime | None) -> SafeString | str:
    """A `<time>` element in the one date format of the site, in the server's time zone."""
    if moment is None:
        return NOTHING
    shown = timezone.localtime(moment) if timezone.is_aware(moment) else moment
    return format_html(
        '<time datetime="{}">{}</time>', moment.isoformat(), dateformat.format(shown, DATE_FORMAT)
    )
