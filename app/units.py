"""Byte sizes ("5MiB", 5242880) and durations ("1h", "10s", 60) as written in configuration files."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)b?\s*", re.IGNORECASE)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a byte size must be an integer or a string like '10MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a byte size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match:
            number, prefix, binary = match.groups()
            power = "kmgtp".find(prefix.lower()) + 1 if prefix else 0
            return int(float(number) * (1024 if binary or not prefix else 1000) ** power)
    raise ValueError(f"invalid byte size {value!r} (examples: 1048576, '512KiB', '10MiB', '5MB')")


def parse_duration(value: Any) -> float:
    """Seconds, from a number of seconds or a string such as '1h', '10s', '1h30m', '250ms'."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '10s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f"invalid duration {value!r} (examples: 60, '10s', '5m', '1h', '1h30m')")


ByteSize = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
