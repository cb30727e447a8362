"""`retention`: delete old base backups at the site, and the WAL only they needed.

One entry point, `run_retention`, for the CLI verb and the daemon. It reads the site
(`retention_site`), plans (`retention_plan`, pure) and deletes in the
order that keeps a crash half way safe: backups before WAL, oldest WAL first, so an
interrupted run keeps more than needed, never less and never with a hole. At the
primary site it then drops the spool's tombstones and the catalog rows of deleted WAL
and marks deleted backups in the catalog.

With `at_site` it runs at the standby site on its local folders (a restricted site,
whose primary key may delete nothing): the same plan from what the site holds alone,
no catalog or spool, incomplete backup folders only once nothing changed in them for
`STALE_TEMP_S`, and stale upload temps swept. There the records the primary shipped
are not taken at their word, or a compromised primary could have the site's own
retention delete what its key cannot (ship N records of "newer" backups, and the
real ones go): a backup makes older ones go only once a restore drill passed for it
at the site, and `keep_within` counts from when its record arrived at the site.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from logship.engines.postgresql import walnames
from logship.engines.postgresql.archive_wal import SHIPPED_DIR, tombstone_path
from logship.engines.postgresql.backup_lock import is_backup_running
from logship.engines.postgresql.retention_plan import (
    RetentionPlan,
    StandbyNeed,
    plan_retention,
    segment_number,
    standby_need,
)
from logship.engines.postgresql.retention_site import (
    read_manifest,
    remove_backup,
    remove_folder,
    remove_wal,
    scan_site,
    site_segment_size,
)
from logship.engines.postgresql.standby_status import StandbyFacts, ask_standby_status
from logship.errors import LogshipError, OperationFailed, first_line
from logship.manifest import BackupRecord, SiteLayout
from logship.ship.transport import Transport
from logship.site_temps import STALE_TEMP_S, last_change, sweep_stale_temps
from logship.spool import kept_path
from logship.status.figures import iso_utc

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
    from logship.config.model import Config
    from logship.engines.postgresql.drill import DrillResult

__all__ = [
    "RetentionPlan",
    "RetentionReport",
    "StandbyNeed",
    "fetch_standby_facts",
    "plan_retention",
    "run_retention",
]

STANDBY_TIMEOUT = 30.0
#: WAL files deleted at the site between two catalog and spool updates
WAL_BATCH = 200

Clock = Callable[[], float]


def fetch_standby_facts(
    config: Config, connector_name: str, transport: Transport, clock: Clock = time.time
) -> StandbyFacts:
    """`standby status --json` at the connector's site, over `transport` (SSH)."""
    site = config.site_of(config.connector(connector_name))
    try:
        facts = ask_standby_status(
            transport, site.command, connector_name, clock, STANDBY_TIMEOUT
        ).facts
    except Exception as exc:  # the SSH link failing: not known, so every WAL file stays
        return StandbyFacts(
            connector=connector_name,
            measured_at=clock(),
            reachable=False,
            error=f"`standby status` over SSH failed: {first_line(exc)}",
        )
    return facts


# -- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionReport:
    """What a retention run deleted (with `dry_run`: would delete)."""

    connector: str
    site: str
    dry_run: bool
    at: float
    keep_backups: int | None
    keep_within_s: float | None
    kept_backups: tuple[str, ...]
    deleted_backups: tuple[BackupRecord, ...]
    deleted_incomplete: tuple[str, ...]
    deleted_wal: tuple[str, ...]
    deleted_backup_bytes: int
    #: stored (compressed) bytes, from the manifest records that could be read
    deleted_wal_bytes: int
    cutoff_wal: str | None
    cutoff_reason: str
    standby_redo_wal: str | None
    segment_size: int
    forgotten_catalog_rows: int
    notes: tuple[str, ...]
    #: stale upload temps removed at the site (with `dry_run`: that would be)
    swept_temps: int = 0

    @property
    def deleted_bytes(self) -> int:
        return self.deleted_backup_bytes + self.deleted_wal_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "connector": self.connector,
            "site": self.site,
            "dry_run": self.dry_run,
            "at": iso_utc(self.at),
            "keep_backups": self.keep_backups,
            "keep_within_s": self.keep_within_s,
            "kept_backups": list(self.kept_backups),
            "deleted_backups": [
                {
                    "backup_id": b.backup_id,
                    "started_at": iso_utc(b.started_at),
                    "finished_at": iso_utc(b.finished_at),
                    "stored_size": b.stored_size,
                    "start_wal": b.start_wal,
                }
                for b in self.deleted_backups
            ],
            "deleted_incomplete": list(self.deleted_incomplete),
            "deleted_wal": list(self.deleted_wal),
            "deleted_wal_count": len(self.deleted_wal),
            "deleted_backup_bytes": self.deleted_backup_bytes,
            "deleted_wal_bytes": self.deleted_wal_bytes,
            "deleted_bytes": self.deleted_bytes,
            "cutoff_wal": self.cutoff_wal,
            "cutoff_reason": self.cutoff_reason,
            "standby_redo_wal": self.standby_redo_wal,
            "segment_size": self.segment_size,
            "forgotten_catalog_rows": self.forgotten_catalog_rows,
            "swept_temps": self.swept_temps,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line for logs and the journal."""
        verb = "would delete" if self.dry_run else "deleted"
        return (
            f"retention {self.connector}: {verb} {len(self.deleted_backups)} backup(s), "
            f"{len(self.deleted_incomplete)} incomplete folder(s), "
            f"{len(self.deleted_wal)} WAL file(s), {self.deleted_bytes} bytes; "
            f"WAL cutoff {self.cutoff_wal or 'none'} ({self.cutoff_reason})"
        )


# -- applying ----------------------------------------------------------------------------


@dataclass
class _Applier:
    """Carries out a plan; counts what it did for the report."""

    connector: str
    transport: Transport
    layout: SiteLayout
    catalog: Catalog | None
    #: the primary's spool, whose tombstones of deleted WAL go too (None at the site)
    spool_dir: Path | None
    dry_run: bool
    clock: Clock
    notes: list[str]
    backup_bytes: int = 0
    wal_bytes: int = 0
    forgotten: int = 0

    def backups(self, plan: RetentionPlan) -> tuple[list[BackupRecord], list[str]]:
        deleted: list[BackupRecord] = []
        for backup in plan.delete_backups:
            if not self.dry_run:
                remove_backup(self.transport, self.layout, backup.backup_id)
            deleted.append(backup)
            self.backup_bytes += backup.stored_size
        incomplete: list[str] = []
        for backup_id in plan.delete_incomplete:
            if not self.dry_run:
                # A backup that was finishing while the site was scanned has its
                # record now: it is complete, not abandoned.
                if self.transport.read_bytes(self.layout.backup_record(backup_id)) is not None:
                    self.notes.append(f"backup {backup_id} completed meanwhile; kept")
                    continue
                remove_folder(self.transport, self.layout.backup_dir(backup_id))
            incomplete.append(backup_id)
        if not self.dry_run and self.catalog is not None:
            ids = [b.backup_id for b in deleted] + incomplete
            self.catalog.mark_backups_deleted(self.connector, ids, self.clock())
        return deleted, incomplete

    def wal(self, plan: RetentionPlan) -> list[str]:
        deleted: list[str] = []
        for start in range(0, len(plan.delete_wal), WAL_BATCH):
            batch = plan.delete_wal[start : start + WAL_BATCH]
            for name in batch:
                if self.dry_run:
                    record = read_manifest(self.transport, self.layout, name)
                else:
                    record = remove_wal(self.transport, self.layout, name)
                if record is not None:
                    self.wal_bytes += record.stored_size
                deleted.append(name)
            if not self.dry_run:
                self._forget(batch)
        return deleted

    def _forget(self, names: Sequence[str]) -> None:
        """The primary site's traces of WAL gone from the site: tombstones, kept copies,
        catalog rows."""
        if self.spool_dir is None:
            return  # at the site: the primary's traces are the primary's
        failed = 0
        for name in names:
            try:
                tombstone_path(self.spool_dir, name).unlink(missing_ok=True)
                kept_path(self.spool_dir, name).unlink(missing_ok=True)
            except OSError:
                failed += 1
        if failed:
            self.notes.append(
                f"{failed} spool tombstone(s) in {self.spool_dir / SHIPPED_DIR} could not be "
                "removed (permission?); they only keep a re-push check"
            )
        if self.catalog is not None:
            self.forgotten += self.catalog.forget_files(self.connector, list(names))


T = TypeVar("T")


def _guarded(
    connector: str, step: str, action: Callable[[RetentionPlan], T], plan: RetentionPlan
) -> T:
    try:
        return action(plan)
    except LogshipError:
        raise
    except Exception as exc:
        raise OperationFailed(
            f"connector {connector}: retention stopped while deleting {step}: "
            f"{first_line(exc)} (what is left is consistent and still restorable; run "
            "retention again)"
        ) from exc


def _standby_need(facts: StandbyFacts | None, promoted: bool) -> StandbyNeed:
    if promoted:
        return StandbyNeed.unknown(
            "the standby was promoted (PROMOTED marker at the site): its WAL history stays"
        )
    return standby_need(facts)


def forget_removed_at_site(
    config: Config, connector_name: str, transport: Transport, catalog: Catalog, clock: Clock
) -> tuple[int, int]:
    """For a restricted site, whose own retention deletes: forget at the primary what
    it removed, reading the site and deleting nothing there. Returns (WAL rows
    forgotten, backups marked deleted).

    A WAL file is forgotten (catalog row, spool tombstone and kept copy) only when
    shipped, absent at the site, older than the oldest WAL still there, and not one
    restore-wal refused and set aside (its re-ship needs the kept copy). A backup is
    marked deleted only when it finished and its folder is gone.
    """
    from logship.catalog.models import FileState
    from logship.engines.postgresql.base_backup import postgres_connector

    connector = postgres_connector(config, connector_name)
    layout = SiteLayout.for_connector(config.site_of(connector).root, connector.name)
    contents = scan_site(transport, layout, connector.name)
    present = set(contents.wal_names)
    seg_size = site_segment_size(transport, layout, contents.wal_names, catalog, connector.name)
    numbers = [n for name in present if (n := segment_number(name, seg_size)) is not None]
    refused = {n.removesuffix(".json") for n in transport.listdir(layout.refused_dir)}
    gone: list[str] = []
    if numbers:
        oldest = min(numbers)
        for row in catalog.files(connector.name):
            number = segment_number(row.name, seg_size)
            if (
                row.state in (FileState.SHIPPED, FileState.APPLIED)
                and row.name not in present
                and row.name not in refused
                and number is not None
                and number < oldest
            ):
                gone.append(row.name)
    applier = _Applier(
        connector.name,
        transport,
        layout,
        catalog,
        config.spool_dir(connector.name),
        False,
        clock,
        [],
    )
    applier._forget(gone)
    folders = set(transport.listdir(layout.base_dir))
    deleted = [
        b.backup_id
        for b in catalog.backups(connector.name)
        if b.state == "done" and b.backup_id not in folders
    ]
    catalog.mark_backups_deleted(connector.name, deleted, clock())
    return len(gone), len(deleted)


def _passed_drill(layout: SiteLayout, backup: BackupRecord) -> DrillResult | None:
    """The last restore drill of `backup` at this site, when it passed."""
    from logship.engines.postgresql.drill import DrillResult

    try:
        data = Path(layout.drill_dir / f"{backup.backup_id}.json").read_bytes()
        result = DrillResult.from_json(data)
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
    if result.passed and (result.connector, result.backup_id) == (
        backup.connector,
        backup.backup_id,
    ):
        return result
    return None


def _earlier_wal(a: str | None, b: str | None) -> str | None:
    """The earlier of two WAL file names in the stream; None when either is unknown
    or not a WAL file name (then what the backup needs is not known)."""
    if a is None or b is None or walnames.parse(a) is None or walnames.parse(b) is None:
        return None
    # Timeline, log and segment are fixed-width upper-case hex: place first, then
    # timeline, compare as strings exactly as they compare in the stream.
    return min(a, b, key=lambda name: (name[8:24], name[:8]))


def _as_the_site_saw(
    layout: SiteLayout, backups: Sequence[BackupRecord], notes: list[str]
) -> tuple[list[BackupRecord], frozenset[str]]:
    """At the site: each backup as finished no earlier than its record arrived here
    (the inode's change time, which no SFTP request sets), the ids of those no drill
    has proven, which make no other go, and each proven one as starting no later
    than the backup_label its drill restored says: a start_wal the primary wrote
    later than that would have the site delete WAL the backup needs."""
    seen: list[BackupRecord] = []
    unproven: set[str] = set()
    for backup in backups:
        try:
            arrived = os.lstat(layout.backup_record(backup.backup_id)).st_ctime
        except OSError:
            arrived = backup.finished_at
        start = backup.start_wal
        drill = _passed_drill(layout, backup)
        if drill is None:
            unproven.add(backup.backup_id)
        else:
            start = _earlier_wal(backup.start_wal, drill.start_wal)
            if drill.start_wal is None:
                notes.append(
                    f"the drill of backup {backup.backup_id} recorded no start WAL (an "
                    "older logship): every WAL file stays until it is drilled again"
                )
        finished_at = max(backup.finished_at, arrived)
        seen.append(dataclasses.replace(backup, finished_at=finished_at, start_wal=start))
    if unproven:
        notes.append(
            f"backup(s) {', '.join(sorted(unproven))} not proven by a passed restore drill at "
            "this site: they count for no keep_backups, so they make no older backup go"
        )
    return seen, frozenset(unproven)


def _settled(
    layout: SiteLayout, incomplete: Sequence[str], now: float, notes: list[str]
) -> tuple[str, ...]:
    """The incomplete backup folders nothing has changed in for STALE_TEMP_S."""
    settled = []
    for backup_id in incomplete:
        changed = last_change(Path(layout.backup_dir(backup_id)))
        if changed is not None and now - changed >= STALE_TEMP_S:
            settled.append(backup_id)
        else:
            notes.append(f"incomplete backup folder {backup_id} changed lately: left for now")
    return tuple(settled)


def run_retention(
    config: Config,
    connector_name: str,
    transport: Transport,
    catalog: Catalog | None,
    *,
    standby: StandbyFacts | None,
    dry_run: bool,
    clock: Clock = time.time,
    at_site: bool = False,
) -> RetentionReport:
    """Apply the connector's [retention] at its site through `transport`.

    `standby` is what `standby status` said (see `fetch_standby_facts`); None means
    not known, and then every WAL file stays. `catalog` (when given) gets deleted
    backups marked and removed WAL forgotten; the spool's tombstones of removed WAL
    go too. With `at_site` (see the module's doc) `transport` is the site's own
    folders and `catalog` None. Raises OperationFailed when the site fails half way.
    """
    from logship.engines.postgresql.base_backup import postgres_connector

    connector = postgres_connector(config, connector_name)
    site = config.site_of(connector)
    layout = SiteLayout.for_connector(site.root, connector.name)
    now = clock()
    try:
        contents = scan_site(transport, layout, connector.name)
        promoted = transport.read_bytes(layout.promoted_marker) is not None
        seg_size = site_segment_size(transport, layout, contents.wal_names, catalog, connector.name)
    except LogshipError:
        raise
    except Exception as exc:  # OSError, paramiko's SSHException, EOFError...
        raise OperationFailed(
            f"connector {connector.name}: retention cannot read {layout.root} at site "
            f"{site.name}: {first_line(exc)} (nothing was deleted)"
        ) from exc
    notes: list[str] = [f"{problem}; kept" for problem in contents.unreadable.values()]
    backups, unproven = list(contents.backups), frozenset[str]()
    if at_site:
        backups, unproven = _as_the_site_saw(layout, backups, notes)
    incomplete = contents.incomplete
    if at_site:
        # The primary's backup lock is not visible here: a folder a backup still
        # writes into has changed lately.
        incomplete = _settled(layout, incomplete, now, notes)
    # Checked after the scan: a backup holding the lock now may own any folder seen.
    elif incomplete and is_backup_running(config.logship.state_dir, connector.name):
        notes.append("a base backup is running: incomplete folders are left for the next run")
        incomplete = ()
    plan = plan_retention(
        backups,
        incomplete,
        contents.wal_names,
        connector.retention,
        now,
        _standby_need(standby, promoted),
        segment_size=seg_size,
        unreadable=contents.unreadable,
        unproven=unproven,
    )
    if at_site and backups and unproven >= {b.backup_id for b in backups}:
        # Where each backup starts is then the primary's word alone: no WAL goes on it.
        plan = dataclasses.replace(
            plan,
            delete_wal=(),
            cutoff_wal=None,
            cutoff_reason="every WAL file stays: no backup here is proven by a restore "
            "drill at this site, so where they start is known only from the primary",
        )
    applier = _Applier(
        connector.name,
        transport,
        layout,
        catalog,
        None if at_site else config.spool_dir(connector.name),
        dry_run,
        clock,
        notes,
    )
    # Transport failures (OSError, paramiko's SSHException, EOFError...) become one
    # line saying that stopping half way is safe.
    backups, incomplete_deleted = _guarded(connector.name, "base backups", applier.backups, plan)
    wal = _guarded(connector.name, "WAL", applier.wal, plan)
    swept = sweep_stale_temps(layout, now, dry_run=dry_run) if at_site else 0
    report = RetentionReport(
        connector=connector.name,
        site=site.name,
        dry_run=dry_run,
        at=now,
        keep_backups=connector.retention.keep_backups,
        keep_within_s=connector.retention.keep_within,
        kept_backups=tuple(b.backup_id for b in plan.keep),
        deleted_backups=tuple(backups),
        deleted_incomplete=tuple(incomplete_deleted),
        deleted_wal=tuple(wal),
        deleted_backup_bytes=applier.backup_bytes,
        deleted_wal_bytes=applier.wal_bytes,
        cutoff_wal=plan.cutoff_wal,
        cutoff_reason=plan.cutoff_reason,
        standby_redo_wal=standby.redo_wal if standby is not None else None,
        segment_size=seg_size,
        forgotten_catalog_rows=applier.forgotten,
        notes=tuple(notes),
        swept_temps=swept,
    )
    if catalog is not None and not dry_run and (backups or incomplete_deleted or wal):
        detail = {k: v for k, v in report.to_json().items() if k != "deleted_wal"}
        catalog.add_event(
            connector.name, clock(), "retention", report.summary(), json.dumps(detail)
        )
    return report
