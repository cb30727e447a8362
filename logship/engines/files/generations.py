"""The sync generations of a files connector's target folder, as the site records them.

Before a round changes anything at the site, the files connector appends one line to
`generations.jsonl` there: the round's generation number and the paths it is
about to change. The line comes first so that a crash mid-round can only
over-report what changed, never hide it. A torn last line (a crash during the
append) is skipped on reading.

After a promote this log says which paths changed at the site after the
generation a consistency point names.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: a round of an initial sync may touch every path: the line lists this many
#: and counts the rest
LISTED_MAX = 1000


@dataclass(frozen=True)
class GenerationRecord:
    generation: int
    at: float
    #: how many paths the round set out to change (written, made or removed)
    count: int
    #: the first LISTED_MAX of them
    paths: tuple[bytes, ...]

    @classmethod
    def for_round(cls, generation: int, at: float, paths: Sequence[bytes]) -> GenerationRecord:
        return cls(generation, at, len(paths), tuple(paths[:LISTED_MAX]))

    def to_line(self) -> bytes:
        content = {
            "generation": self.generation,
            "at": self.at,
            "count": self.count,
            # base64: a name may be any bytes but "/" and NUL
            "paths": [base64.b64encode(path).decode("ascii") for path in self.paths],
        }
        return json.dumps(content).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> GenerationRecord | None:
        """The record on `line`, or None for a line that is torn or not a record."""
        try:
            content = json.loads(line)
            return cls(
                int(content["generation"]),
                float(content["at"]),
                int(content["count"]),
                tuple(base64.b64decode(text, validate=True) for text in content["paths"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None


def read_generations(path: Path) -> list[GenerationRecord]:
    """The records of a generations log at this site; [] when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records = (GenerationRecord.from_line(line) for line in data.splitlines())
    return [record for record in records if record is not None]


@dataclass(frozen=True)
class ChangedSince:
    """What the site's tree went through after one generation."""

    site_generation: int | None  # the newest in the log
    rounds: int
    count: int
    paths: tuple[bytes, ...]  # distinct, at most LISTED_MAX
    complete: bool  # False when a round listed only part of its paths


def changed_since(records: Iterable[GenerationRecord], generation: int) -> ChangedSince:
    newest: int | None = None
    rounds = count = 0
    complete = True
    seen: dict[bytes, None] = {}
    for record in records:
        newest = record.generation if newest is None else max(newest, record.generation)
        if record.generation <= generation:
            continue
        rounds += 1
        count += record.count
        complete = complete and record.count == len(record.paths)
        for path in record.paths:
            if len(seen) < LISTED_MAX:
                seen.setdefault(path)
    return ChangedSince(newest, rounds, count, tuple(seen), complete and len(seen) < LISTED_MAX)
