"""Decimal numbers written by clients (`n`, `Range`, `Content-Range`, ports): parsed defensively.

`str.isdigit()` is true for `²` and other Unicode digits, which `int()` refuses or reads as some other
value, and `int()` of more than 4300 digits raises ValueError (CPython's conversion limit): client text
goes through here instead. Only ASCII digits are numbers, and no conversion ever sees more than
`MAX_DIGITS` significant digits, so a 5000-digit value costs a length check, not a 500.
"""

from __future__ import annotations

# 10**19 > 2**63: every size, offset and count this registry handles has at most 19 digits.
MAX_DIGITS = 19


def _significant(text: str) -> str | None:
    """The digits of `text` without leading zeros ("" for zero); None unless it is 1+ ASCII digits."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return text.lstrip("0")


def decimal(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of `text` when it is ASCII digits with at most `max_digits` significant ones, else None."""
    digits = _significant(text)
    if digits is None or len(digits) > max_digits:
        return None
    return int(digits or "0")


def decimal_at_most(text: str, ceiling: int) -> int | None:
    """min(value, ceiling) for ASCII digits of any length (one too long to convert is above every
    ceiling), None when `text` is not a number."""
    digits = _significant(text)
    if digits is None:
        return None
    if len(digits) > len(str(ceiling)):
        return ceiling
    return min(int(digits or "0"), ceiling)
