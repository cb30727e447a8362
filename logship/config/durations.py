"""Durations in config files: "500ms", "30s", "5m", "2h", "1d" or a number of seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: object, *, zero: bool = False) -> float:
    """Seconds as a float; ValueError with the accepted forms otherwise. 0 only with
    `zero` (a wait that may be turned off)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '5m' or '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration such as '30s', '5m' or '1h'")
    if seconds < 0 or (seconds == 0 and not zero):
        raise ValueError("a duration must be greater than zero")
    return seconds


def parse_wait(value: object) -> float:
    """A duration that may be 0 (never wait)."""
    return parse_duration(value, zero=True)
