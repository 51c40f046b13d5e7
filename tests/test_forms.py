from __future__ import annotations

from typing import Any

import pytest

from generator.forms import BatchForm

WHOLE_NUMBER = "Enter a whole number, like 100."
REQUIRED = "Say how many users to create."
AT_LEAST_50 = "Ensure this value is greater than or equal to 50."
AT_MOST_500 = "Ensure this value is less than or equal to 500."

BAD_TOTALS = [
    pytest.param("", REQUIRED, id="empty"),
    pytest.param(None, REQUIRED, id="none"),
    pytest.param("abc", WHOLE_NUMBER, id="letters"),
    pytest.param("-5", AT_LEAST_50, id="negative"),
    pytest.param("0", AT_LEAST_50, id="zero"),
    pytest.param("49", AT_LEAST_50, id="one-below-min"),
    pytest.param("501", AT_MOST_500, id="one-above-max"),
    pytest.param("50.5", WHOLE_NUMBER, id="decimal"),
    pytest.param("50.0", WHOLE_NUMBER, id="decimal-zero"),
    pytest.param("1e3", WHOLE_NUMBER, id="exponent"),
    pytest.param("1,000", WHOLE_NUMBER, id="thousands-separator"),
    pytest.param("\u0665\u0660", WHOLE_NUMBER, id="non-ascii-digits"),
    pytest.param(" ", WHOLE_NUMBER, id="blank"),
    pytest.param("9" * 5000, AT_MOST_500, id="5000-digits"),
    pytest.param("-" + "9" * 5000, AT_LEAST_50, id="minus-5000-digits"),
    pytest.param("99999999999999999999", AT_MOST_500, id="huge"),
    pytest.param("<script>alert(1)</script>", WHOLE_NUMBER, id="html"),
    pytest.param("5\x000", WHOLE_NUMBER, id="nul-byte"),
    pytest.param(True, WHOLE_NUMBER, id="bool"),
    pytest.param(50.5, WHOLE_NUMBER, id="float"),
]


@pytest.mark.parametrize(("total", "message"), BAD_TOTALS)
def test_bad_total_is_rejected_with_a_clear_message(total: Any, message: str) -> None:
    form = BatchForm(data={"total": total})

    assert not form.is_valid()
    assert form.errors["total"] == [message]
    assert "total" not in form.cleaned_data


def test_missing_total_is_required() -> None:
    form = BatchForm(data={})

    assert not form.is_valid()
    assert form.errors["total"] == [REQUIRED]


@pytest.mark.parametrize(
    ("total", "expected"),
    [("50", 50), ("500", 500), (" 120 ", 120), (120, 120)],
)
def test_good_total_is_accepted_as_an_int(total: Any, expected: int) -> None:
    form = BatchForm(data={"total": total})

    assert form.is_valid(), form.errors
    assert form.cleaned_data["total"] == expected
    assert type(form.cleaned_data["total"]) is int


def test_total_bounds_follow_the_settings(settings: Any) -> None:
    settings.GENERATOR_MIN_TOTAL = 1
    settings.GENERATOR_MAX_TOTAL = 10

    assert BatchForm(data={"total": "1"}).is_valid()
    assert BatchForm(data={"total": "10"}).is_valid()
    too_few = BatchForm(data={"total": "0"})
    too_many = BatchForm(data={"total": "11"})
    assert too_few.errors["total"] == ["Ensure this value is greater than or equal to 1."]
    assert too_many.errors["total"] == ["Ensure this value is less than or equal to 10."]
    assert BatchForm().fields["total"].help_text == "From 1 to 10."


def test_bounds_given_to_the_form_override_the_settings() -> None:
    form = BatchForm(data={"total": "5000"}, min_total=1000, max_total=10_000)

    assert form.is_valid(), form.errors
    assert not BatchForm(data={"total": "999"}, min_total=1000, max_total=10_000).is_valid()


def test_default_bounds_are_50_to_500() -> None:
    assert BatchForm().fields["total"].help_text == "From 50 to 500."


def test_empty_password_is_allowed() -> None:
    form = BatchForm(data={"total": "50", "password": ""})

    assert form.is_valid(), form.errors
    assert form.cleaned_data["password"] == ""


def test_too_common_password_is_rejected_by_django_validators() -> None:
    form = BatchForm(data={"total": "50", "password": "password"})

    assert not form.is_valid()
    assert "This password is too common." in form.errors["password"]
    assert "password" not in form.cleaned_data


def test_strong_password_is_accepted_unchanged() -> None:
    password = " Correct-Horse-Battery-Staple-42 "
    form = BatchForm(data={"total": "50", "password": password})

    assert form.is_valid(), form.errors
    assert form.cleaned_data["password"] == password
