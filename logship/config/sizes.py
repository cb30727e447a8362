"""Sizes in config files: "512MB", "4GB", "1TB" or a number of bytes.

The units are PostgreSQL's (kB, MB, GB, TB, powers of 1024), so a value can be
read the same way in logship's files and in postgresql.conf.
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?[bB]?)\s*$")


def parse_size(value: object) -> int:
    """Bytes as an int; ValueError with the accepted forms otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '512MB' or '4GB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        unit = match.group(2).upper()
        if unit and not unit.endswith("B"):
            unit += "B"
        size = int(match.group(1)) * _UNITS[unit]
    else:
        raise ValueError(f"{value!r} is not a size such as '512MB' or '4GB'")
    if size <= 0:
        raise ValueError("a size must be greater than zero")
    return size
