from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError

from . import conf
from .formatting import thousands
from .services import BatchOptions

WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
# Past this many digits a number is out of any range we accept; checked before int() so a
# 5000-digit string costs nothing.
MAX_DIGITS = 18
# A seed survives a round trip through JSON in a browser (JavaScript numbers are exact up to
# here), and stays below the 18-digit clamp above so a huge one is refused, not clamped in.
MAX_SEED = 2**53 - 1


class WholeNumberField(forms.IntegerField):
    """An integer written as digits only: no decimals, exponents or separators."""

    default_error_messages = {"invalid": "Enter a whole number, like 100."}

    def to_python(self, value: Any) -> int | None:
        if value in self.empty_values:
            return None
        if isinstance(value, bool):
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if not WHOLE_NUMBER.fullmatch(text):
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        if len(text.lstrip("+-")) > MAX_DIGITS:
            text = text[0] + "9" * MAX_DIGITS if text[0] == "-" else "9" * MAX_DIGITS
        return int(text)


class StrictCheckboxInput(forms.CheckboxInput):
    """A checkbox that hands its raw value to the field, which decides what is true."""

    def value_from_datadict(self, data: Any, files: Any, name: str) -> Any:
        return data.get(name)


class StrictBooleanField(forms.BooleanField):
    """A yes/no that refuses anything but a boolean or the words a checkbox or JSON sends."""

    widget = StrictCheckboxInput
    default_error_messages = {"invalid": "Enter true or false."}
    TRUE = frozenset({"true", "on", "1"})
    FALSE = frozenset({"false", "off", "0", ""})

    def to_python(self, value: Any) -> bool:
        if value is None or isinstance(value, bool):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in self.TRUE | self.FALSE:
            return value.strip().lower() in self.TRUE
        raise ValidationError(self.error_messages["invalid"], code="invalid")


class BatchForm(forms.Form):
    """How many users to create, and optionally one password for all of them."""

    password = forms.CharField(
        label="One password for all these accounts (optional)",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Leave empty for accounts nobody can log in to.",
    )
    realistic_names = StrictBooleanField(
        label="Realistic first and last names",
        required=False,
        help_text="Usernames and emails stay random; the names look like people's.",
    )
    seed = WholeNumberField(
        label="Seed (optional)",
        required=False,
        min_value=0,
        max_value=MAX_SEED,
        help_text="The same request with the same seed on a fresh database makes the same users.",
    )

    # A fresh key in every form shown: submitting the same form twice makes one batch.
    idempotency_key = forms.UUIDField(required=False, widget=forms.HiddenInput, initial=uuid.uuid4)

    def __init__(
        self, *args: Any, min_total: int | None = None, max_total: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # Built here, not at import, so the bounds follow the settings of the moment.
        min_total = conf.min_total() if min_total is None else min_total
        max_total = conf.max_total() if max_total is None else max_total
        self.fields["total"] = WholeNumberField(
            label="How many users",
            min_value=min_total,
            max_value=max_total,
            help_text=f"From {thousands(min_total)} to {thousands(max_total)}.",
            error_messages={"required": "Say how many users to create."},
        )
        self.order_fields(["total", "password", "realistic_names", "seed", "idempotency_key"])

    def batch_options(self) -> BatchOptions:
        """The cleaned request, as keyword arguments for use_cases.batch_submit."""
        data = self.cleaned_data
        return BatchOptions(
            total=data["total"],
            password=data["password"],
            idempotency_key=data["idempotency_key"],
            realistic_names=data["realistic_names"],
            seed=data["seed"],
        )

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if password:
            password_validation.validate_password(password)
        return password
