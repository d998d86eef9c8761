from __future__ import annotations

import pytest

from app.units import parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    (1024, 1024), ("1024", 1024), ("1KiB", 1024), ("1KB", 1000), ("10MiB", 10 * 1024**2),
    ("5MB", 5_000_000), ("5GiB", 5 * 1024**3), ("1.5MiB", int(1.5 * 1024**2)), ("512 kib", 512 * 1024),
])
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "ten", "5XB", -1, True, "1MiBs"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(("text", "expected"), [
    (60, 60.0), ("60", 60.0), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0),
    ("250ms", 0.25), ("2d", 172800.0),
])
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "soon", "1x", -5, "h1"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)
