"""Retention planning: which base backups stay, and from which WAL file on WAL stays.

A pure function of what the site holds, the policy, the clock and what the standby
still needs, so every rule is testable with plain values (no I/O here; see
`logship.engines.postgresql.retention` for running it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from logship.engines.postgresql import walnames
from logship.engines.postgresql.engine import RetentionSection
from logship.engines.postgresql.standby_status import StandbyFacts
from logship.engines.postgresql.walnames import WalKind
from logship.manifest import BackupRecord

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class StandbyNeed:
    """What the standby needs from the site's WAL, as far as it is known.

    `keep_all_wal` (a reason) wins; else `redo_wal` is the oldest file it needs;
    `present=False` means there is no standby, so the backups alone decide.
    """

    present: bool = True
    redo_wal: str | None = None
    keep_all_wal: str | None = None

    @classmethod
    def absent(cls) -> StandbyNeed:
        return cls(present=False)

    @classmethod
    def needs_from(cls, redo_wal: str) -> StandbyNeed:
        return cls(redo_wal=redo_wal)

    @classmethod
    def unknown(cls, reason: str) -> StandbyNeed:
        return cls(keep_all_wal=reason)


def standby_need(facts: StandbyFacts | None) -> StandbyNeed:
    """Read the standby's facts (`standby status`) as a WAL need."""
    if facts is None:
        return StandbyNeed.unknown("the standby's state is not known (it was not asked)")
    if facts.promoted:
        return StandbyNeed.unknown(
            "the standby was promoted (PROMOTED marker): its WAL history stays"
        )
    if facts.reachable and facts.in_recovery is False:
        return StandbyNeed.unknown(
            "the standby answers but is not in recovery (promoted outside logship?)"
        )
    if facts.redo_wal is not None and _segment(facts.redo_wal) is not None:
        return StandbyNeed.needs_from(facts.redo_wal)
    if not facts.reachable and facts.data_dir_exists is False:
        return StandbyNeed.absent()
    why = facts.redo_error or facts.error or "not reported by the standby site's logship"
    return StandbyNeed.unknown(f"the standby's redo WAL file is unknown ({why})")


@dataclass(frozen=True)
class RetentionPlan:
    keep: tuple[BackupRecord, ...]
    delete_backups: tuple[BackupRecord, ...]
    #: backup folders without a backup.json (none that is being written)
    delete_incomplete: tuple[str, ...]
    #: oldest first, so a run cut short leaves the sequence without a hole
    delete_wal: tuple[str, ...]
    #: WAL from this segment on stays; None when every WAL file stays
    cutoff_wal: str | None
    cutoff_reason: str


def _segment(name: str) -> walnames.WalName | None:
    """The segment a WAL-ish name belongs to (a .backup or .partial file's own)."""
    parsed = walnames.parse(name[:24])
    return parsed if parsed is not None and parsed.kind is WalKind.SEGMENT else None


def segment_number(name: str, segment_size: int) -> int | None:
    """Where a segment, .partial or .backup file sits in the WAL stream; None for a
    .history file or a name that is not WAL."""
    parsed = walnames.parse(name, allow_partial=True)
    if parsed is None or parsed.kind is WalKind.HISTORY:
        return None
    segment = _segment(name)
    return None if segment is None else segment.segment_number(segment_size)


def _order(backup: BackupRecord) -> tuple[float, str]:
    return backup.started_at, backup.backup_id


def backups_to_keep(
    backups: Sequence[BackupRecord],
    policy: RetentionSection,
    now: float,
    unproven: AbstractSet[str] = frozenset(),
) -> list[BackupRecord]:
    """The kept backups, oldest first: the newest `keep_backups`, those younger than
    `keep_within`, and always the newest one.

    `unproven` ones (no restore drill passed for them) do not count among the
    newest: they make no other backup go. Those newer than what the count keeps
    stay (real ones, not drilled yet); older ones go like any other.
    """
    everything = sorted(backups, key=_order)
    proven = [b for b in everything if b.backup_id not in unproven]
    if not proven or (policy.keep_backups is None and policy.keep_within is None):
        return everything
    newest = proven[-policy.keep_backups :] if policy.keep_backups is not None else proven[-1:]
    kept = {b.backup_id for b in newest}
    if policy.keep_within is not None:
        kept.update(b.backup_id for b in everything if now - b.finished_at < policy.keep_within)
    oldest_counted = _order(newest[0])
    kept.update(
        b.backup_id for b in everything if b.backup_id in unproven and _order(b) > oldest_counted
    )
    return [b for b in everything if b.backup_id in kept]


def _wal_cutoff(
    kept: Sequence[BackupRecord],
    standby: StandbyNeed,
    unreadable: Mapping[str, str],
    segment_size: int,
) -> tuple[str | None, str]:
    """(first WAL file that stays, why); (None, why) when every WAL file stays."""
    if unreadable:
        names = ", ".join(sorted(unreadable))
        return None, f"every WAL file stays: backup record(s) of {names} cannot be read"
    starts: list[tuple[int, BackupRecord]] = []
    for backup in kept:
        start = backup.start_wal
        number = None if start is None else segment_number(start, segment_size)
        if number is None:
            return None, (
                f"every WAL file stays: backup {backup.backup_id} has no start WAL "
                "(recorded by an older logship), so what it needs is not known"
            )
        starts.append((number, backup))
    start_number, oldest = min(starts, key=lambda item: item[0])
    assert oldest.start_wal is not None
    if standby.keep_all_wal is not None:
        return None, f"every WAL file stays: {standby.keep_all_wal}"
    if standby.redo_wal is not None:
        redo_number = segment_number(standby.redo_wal, segment_size)
        if redo_number is not None and redo_number < start_number:
            return standby.redo_wal, (
                f"the standby still needs WAL from its redo point {standby.redo_wal}, "
                f"before backup {oldest.backup_id}'s start {oldest.start_wal}"
            )
    return oldest.start_wal, f"start of the oldest kept backup {oldest.backup_id}"


def plan_retention(
    backups: Sequence[BackupRecord],
    incomplete: Iterable[str],
    wal_names: Iterable[str],
    policy: RetentionSection,
    now: float,
    standby: StandbyNeed,
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    unreadable: Mapping[str, str] | None = None,
    unproven: AbstractSet[str] = frozenset(),
) -> RetentionPlan:
    """What to delete at the site. No I/O.

    `backups` are the complete ones (with a backup.json), `incomplete` the folders
    without one that no running backup is writing, `wal_names` the site's WAL as
    manifest names (no `.zst`), `unreadable` backup ids whose record cannot be
    read (kept, and with them every WAL file), `unproven` backup ids that make no
    other go (see `backups_to_keep`).
    """
    unreadable = unreadable or {}
    incomplete = sorted(incomplete)
    if not backups:
        return RetentionPlan(
            (), (), (), (), None, "no complete base backup at the site: nothing is deleted"
        )
    if policy.keep_backups is None and policy.keep_within is None:
        return RetentionPlan(
            tuple(sorted(backups, key=_order)),
            (),
            (),
            (),
            None,
            "no retention rule is set (keep_backups and keep_within): everything stays",
        )
    kept = backups_to_keep(backups, policy, now, unproven)
    kept_ids = {b.backup_id for b in kept}
    deleted = tuple(b for b in sorted(backups, key=_order) if b.backup_id not in kept_ids)
    cutoff, reason = _wal_cutoff(kept, standby, unreadable, segment_size)
    delete_wal: list[tuple[int, str]] = []
    if cutoff is not None:
        limit = segment_number(cutoff, segment_size)
        assert limit is not None
        for name in set(wal_names):
            number = segment_number(name, segment_size)
            # .history files have no number: every timeline switch stays readable.
            if number is not None and number < limit:
                delete_wal.append((number, name))
    return RetentionPlan(
        keep=tuple(kept),
        delete_backups=deleted,
        delete_incomplete=tuple(incomplete),
        delete_wal=tuple(name for _, name in sorted(delete_wal)),
        cutoff_wal=cutoff,
        cutoff_reason=reason,
    )
