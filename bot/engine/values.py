"""Comparing field values across the wire.

CRMs hand values back in their own spelling: HubSpot returns every property as a string ("48000"),
Salesforce returns JSON numbers and booleans, both use null or "" for an empty field. The stale
guard and crash recovery must not mistake a change of spelling for a change of value.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


def normalize(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return _number(Decimal(str(value)))
    text = str(value)
    if text == "":
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    return _number(number) if number.is_finite() else text


def _number(number: Decimal) -> str:
    if number == number.to_integral_value():
        return str(number.quantize(Decimal(1)))
    return format(number.normalize(), "f")


def same_value(a: Any, b: Any) -> bool:
    return normalize(a) == normalize(b)


def preview(value: Any, limit: int = 80) -> str:
    """A short, single-line rendering of a value for alerts and logs."""
    if value is None:
        return "(empty)"
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
