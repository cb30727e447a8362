"""The WAL shipped to the site, as its manifest tells: order, gaps, the newest timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from logship.catalog.models import FileState
from logship.engines.postgresql import walnames
from logship.engines.postgresql.lag import find_gap, segment_size
from logship.engines.postgresql.walnames import WalKind, segment_name
from logship.manifest import ManifestRecord, SiteLayout
from logship.status.model import Gap


@dataclass(frozen=True)
class ShippedFile:
    """A manifest record as a `status.figures.FileRow`: everything listed here is at the site."""

    name: str
    size: int
    closed_at: float
    stored_name: str
    state: str = FileState.SHIPPED


def read_manifest(layout: SiteLayout) -> tuple[list[ManifestRecord], list[str]]:
    """Every record at the site, and a problem line per unreadable one."""
    records: list[ManifestRecord] = []
    problems: list[str] = []
    try:
        paths = sorted(Path(layout.manifest_dir).glob("*.json"))
    except OSError as exc:
        return [], [f"cannot list {layout.manifest_dir}: {exc}"]
    for path in paths:
        try:
            record = ManifestRecord.from_json(path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            problems.append(f"manifest record {path} is unreadable ({exc})")
            continue
        records.append(record)
    return records, problems


@dataclass(frozen=True)
class ShippedWal:
    """The site's WAL in ship order (timeline, its .history first, name)."""

    files: tuple[ShippedFile, ...]
    partials: tuple[ShippedFile, ...]
    seg_size: int

    @classmethod
    def from_records(cls, records: Sequence[ManifestRecord]) -> ShippedWal:
        files: list[tuple[tuple[int, int, str], ShippedFile]] = []
        partials = []
        for record in records:
            parsed = walnames.parse(record.name, allow_partial=True)
            if parsed is None or parsed.kind is WalKind.BACKUP:
                continue
            row = ShippedFile(record.name, record.size, record.closed_at, record.stored_name)
            if parsed.kind is WalKind.PARTIAL:
                partials.append(row)
            else:
                files.append((parsed.sort_key, row))
        rows = tuple(row for _, row in sorted(files, key=lambda item: item[0]))
        return cls(rows, tuple(partials), segment_size(rows))

    def number(self, name: str) -> int:
        parsed = walnames.parse(name, allow_partial=True)
        assert parsed is not None
        return parsed.segment_number(self.seg_size)

    def segments(self) -> list[ShippedFile]:
        return [f for f in self.files if walnames.parse(f.name).kind is WalKind.SEGMENT]  # type: ignore[union-attr]

    @property
    def timeline(self) -> int | None:
        """The highest timeline among shipped segments and history files."""
        names = [f.name for f in self.files]
        return max((int(n[:8], 16) for n in names), default=None)

    def has_history(self, timeline: int) -> bool:
        return any(f.name == f"{timeline:08X}.history" for f in self.files)

    def pending(self, replay_lsn: int | None) -> list[ShippedFile]:
        """Files replay still needs: from the segment holding `replay_lsn` on.

        A gap the standby has already replayed past (or WAL retention removed
        before its position) cannot stop it, so it does not count.
        """
        if replay_lsn is None:
            return list(self.files)
        current = replay_lsn // self.seg_size
        kept = []
        for row in self.files:
            parsed = walnames.parse(row.name)
            assert parsed is not None
            if parsed.kind is WalKind.HISTORY or parsed.segment_number(self.seg_size) >= current:
                kept.append(row)
        return kept

    def gap(self, replay_lsn: int | None, standby_timeline: int | None) -> Gap | None:
        pending = self.pending(replay_lsn)
        if replay_lsn is None:
            return find_gap(pending)
        # find_gap only sees holes between two shipped segments; the hole may also
        # sit between the standby's position and the first shipped segment. Mid-segment,
        # the standby already holds the segment it reads, so the next one is needed;
        # exactly at a boundary (after a WAL switch) the segment starting there is.
        need = replay_lsn // self.seg_size + (1 if replay_lsn % self.seg_size else 0)
        segments = set(self.segments())
        numbers = [self.number(f.name) for f in pending if f in segments]
        if numbers and min(numbers) > need:
            timeline = standby_timeline or int(pending[0].name[:8], 16)
            return Gap(
                missing=segment_name(timeline, need, self.seg_size),
                segment_number=need,
                after="(the standby's replay position)",
            )
        return find_gap(pending)

    def last_segment(self) -> ShippedFile | None:
        segments = self.segments()
        return segments[-1] if segments else None

    def end_lsn(self, row: ShippedFile) -> int:
        return (self.number(row.name) + 1) * self.seg_size

    def final_partial(self) -> ShippedFile | None:
        """A `.partial` that continues right after the last complete segment."""
        last = self.last_segment()
        for row in self.partials:
            if last is None or (
                row.name[:8] == last.name[:8]
                and self.number(row.name) == self.number(last.name) + 1
            ):
                return row
        return None
