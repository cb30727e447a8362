"""JSON read from the other site or from files it wrote: bounded, and every way it
can be malformed is a ValueError naming what it should have been.

`json.loads` raises RecursionError on deeply nested input and UnicodeDecodeError
on bad bytes; callers that catch ValueError would let the first through as a
crash. Stdlib only (restore-wal imports this).
"""

from __future__ import annotations

import json
from typing import Any

#: a record or marker logship writes is a few hundred bytes
MAX_RECORD_BYTES = 1024 * 1024


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def load_object(data: str | bytes, what: str, limit: int = MAX_RECORD_BYTES) -> dict[str, Any]:
    """The JSON object in `data`; ValueError ("<what>: why") otherwise."""
    if len(data) > limit:
        raise ValueError(f"{what}: larger than {limit} bytes")
    try:
        raw = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError is one
        raise ValueError(f"{what}: not JSON ({str(exc)[:120]})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what}: not a JSON object")
    return raw
