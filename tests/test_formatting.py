from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from generator import formatting


@pytest.mark.parametrize(
    ("count", "shown"),
    [(0, "0"), (999, "999"), (1_000, "1,000"), (200_000, "200,000"), (None, "\N{EN DASH}")],
)
def test_counts_are_shown_with_thousands_separators(count: int | None, shown: str) -> None:
    assert formatting.thousands(count) == shown


@pytest.mark.parametrize(
    ("rate", "shown"),
    [
        (17_989.4, "17,989 users/s"),
        (100.0, "100 users/s"),
        (4.46, "4.5 users/s"),
        (None, "\N{EN DASH}"),
    ],
)
def test_speeds_are_whole_users_per_second_past_a_hundred(rate: float | None, shown: str) -> None:
    assert formatting.speed(rate) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.034, "0.03 s"),
        (timedelta(seconds=2), "2.00 s"),
        (59.99, "59.99 s"),
        # Rounded to a whole minute, it is read as one: never "60.00 s".
        (59.996, "1 min 0 s"),
        (timedelta(minutes=2, seconds=5, milliseconds=400), "2 min 5 s"),
        (timedelta(hours=1, minutes=59, seconds=59), "1 h 59 min"),
        (timedelta(hours=26, minutes=3), "26 h 3 min"),
        (None, "\N{EN DASH}"),
    ],
)
def test_durations_are_seconds_below_a_minute_and_minutes_above(
    value: timedelta | float | None, shown: str
) -> None:
    assert formatting.duration(value) == shown


def test_a_moment_is_a_time_element_in_the_one_date_format_of_the_site() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC)

    assert formatting.timestamp(moment) == (
        '<time datetime="2026-01-02T03:04:05.000600+00:00">2026-01-02 03:04:05 UTC</time>'
    )
    assert formatting.timestamp(None) == "\N{EN DASH}"
