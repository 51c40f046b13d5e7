from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError

from . import conf

WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
# Past this many digits a number is out of any range we accept; checked before int() so a
# 5000-digit string costs nothing.
MAX_DIGITS = 18


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


class BatchForm(forms.Form):
    """How many users to create, and optionally one password for all of them."""

    password = forms.CharField(
        label="One password for all these accounts (optional)",
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="Leave empty for accounts nobody can log in to.",
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
            help_text=f"From {min_total} to {max_total}.",
            error_messages={"required": "Say how many users to create."},
        )
        self.order_fields(["total", "password", "idempotency_key"])

    def clean_password(self) -> str:
        password = self.cleaned_data["password"]
        if password:
            password_validation.validate_password(password)
        return password
