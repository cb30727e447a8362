"""JSON that is JSON: NaN and infinities never printed.

`json.dumps` writes NaN, Infinity and -Infinity by default, which no strict JSON
parser reads. Every JSON logship prints or writes goes through `dumps` here:
non-finite numbers become null first (an unknown figure), and the encoder
refuses any that slipped through.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(finite(value), allow_nan=False, **kwargs)
