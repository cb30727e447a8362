"""`logship reinstate`: after a failover, the old primary becomes a standby of the
new one, at the old primary's site.

The new timeline's history file (read from the new primary through the SSH link)
names where the old primary's timeline was left; what the old primary holds past
that point is reported and its WAL copied aside; then pg_rewind makes it a copy
of the new primary when that is safe (rewind.py checks), else a fresh base
backup from the new primary replaces it (the old data directory is kept aside).
From the first change to the end the old primary is fenced: started by hand it
comes up read-only and says why.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logship.config.model import Config
from logship.durable import write_bytes_atomically
from logship.engines.postgresql import walnames
from logship.engines.postgresql.divergence import DivergenceReport, loss_report
from logship.engines.postgresql.engine import PostgresConnector, SideSection
from logship.engines.postgresql.fence import FenceReason, fence, fence_state
from logship.engines.postgresql.postmaster import running_server
from logship.engines.postgresql.promote import Step, Verdict
from logship.engines.postgresql.rewind import RewindSafety, rewind_safety
from logship.engines.postgresql.rewind_parse import CRASHED_STATES
from logship.engines.postgresql.rewind_run import bytes_under, run_rewind
from logship.engines.postgresql.rewind_target import read_controldata
from logship.engines.postgresql.roles import ask
from logship.engines.postgresql.standby_restore import LOG_NAME, start_server
from logship.engines.postgresql.switchover_steps import (
    config_for,
    pg_ctl,
    retire_promoted,
    start_following,
    stop_server,
    two_sided,
)
from logship.engines.postgresql.timeline_history import divergence_point, read_server_history
from logship.engines.postgresql.tools import parse_dsn
from logship.engines.postgresql.wal_aside import copy_aside
from logship.errors import OperationFailed, SafetyRefusal, first_line
from logship.manifest import SiteLayout
from logship.recorded_roles import record_primary
from logship.spool import kept_path

REINSTATE_DIR = "reinstate"
#: a base backup of a big database takes long; its SSH command prints little
BASE_BACKUP_TIMEOUT_S = 6 * 3600.0
#: rounds of putting recycled WAL back, each reaching one segment further back;
#: checkpoints come at least every max_wal_size, far fewer segments than this
MAX_WAL_ROUNDS = 256


@dataclass(frozen=True)
class ReinstateOptions:
    dry_run: bool = False


@dataclass
class ReinstateOutcome:
    dry_run: bool
    #: "rewind", "base backup" or "none" (already a standby)
    method: str = "none"
    seconds: float | None = None
    bytes_copied: int | None = None
    data_dir_bytes: int | None = None
    report: DivergenceReport | None = None
    aside: Path | None = None
    fallback_reasons: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)


class Reinstatement:
    def __init__(
        self,
        config: Config,
        name: str,
        options: ReinstateOptions,
        on_step: Callable[[Step], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        connector, here, side = two_sided(config, name)
        if connector.primary_side == here or connector.primary_side is None:
            raise SafetyRefusal(
                f"the database at {here} is the primary of {name}, as the databases say: "
                "reinstate runs at the old primary's site after a failover"
            )
        self.config = config
        self.name = name
        self.here = here
        self.new = connector.primary_side
        self.side = side
        self.other: SideSection = connector.sides[self.new]  # type: ignore[index]
        self.options = options
        self._on_step = on_step
        self._monotonic = monotonic
        self.outcome = ReinstateOutcome(options.dry_run)

    def _step(self, name: str, verdict: Verdict, detail: str) -> None:
        step = Step(name, verdict, detail)
        self.outcome.steps.append(step)
        self._on_step(step)

    @property
    def _would(self) -> Verdict:
        return Verdict.WOULD if self.options.dry_run else Verdict.OK

    # -- the link to the new primary --------------------------------------------------

    @contextlib.contextmanager
    def _link(self) -> Iterator[tuple[Any, str]]:
        """A connection to the new primary and a libpq DSN for pg_rewind, both
        through the SSH link to its site (no database port crosses the sites)."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        from logship.ship.sftp import open_client
        from logship.ship.ssh_forward import local_forward

        endpoint = parse_dsn(self.other.dsn, setting=f"sides.{self.new}.dsn")
        if not endpoint.tcp_hosts:
            raise OperationFailed(
                f"sides.{self.new}.dsn names no TCP host: reinstate reaches the new primary "
                "through the SSH link, to a TCP address as seen at its site"
            )
        sockets = self.config.logship.state_dir / REINSTATE_DIR / "sockets"
        sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
        client = open_client(self.config.sites[self.new])
        try:
            with local_forward(
                client,
                endpoint.tcp_hosts[0],
                endpoint.port,
                label=f"site {self.new}",
                socket_dir=sockets,
            ) as port:
                given = conninfo_to_dict(self.other.dsn)
                for key in ("host", "hostaddr", "port"):
                    given.pop(key, None)
                dsn = make_conninfo("", **given, host=str(sockets), port=str(port))
                try:
                    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
                except psycopg.Error as exc:
                    raise OperationFailed(
                        f"cannot reach the new primary at {self.new} through the SSH link: "
                        f"{first_line(exc)}"
                    ) from None
                with conn:
                    yield conn, dsn
        finally:
            client.close()

    # -- the whole run -----------------------------------------------------------------

    def run(self) -> ReinstateOutcome:
        data_dir = self.side.data_dir
        mine = ask(self.side.dsn)
        if mine.answered and mine.in_recovery and fence_state(data_dir) is None:
            self._step(
                "old primary", Verdict.OK, f"{self.here} is already a standby: nothing to do"
            )
            return self.outcome
        started = self._monotonic()
        self._stop_if_running()
        control = read_controldata(data_dir, self.side.bin_dir)
        with self._link() as (conn, source_dsn):
            new_timeline, history = read_server_history(
                conn, where=f"the new primary at {self.new}"
            )
            diverged = divergence_point(history, new_timeline, control.timeline)
            self._step(
                "divergence",
                Verdict.OK,
                f"timeline {control.timeline} of {self.here} was left at "
                f"{walnames.int_to_lsn(diverged)} for timeline {new_timeline} at {self.new}",
            )
            if not self.options.dry_run:
                fence(data_dir, FenceReason(self.name, "failover", self.new, new_timeline))
                self._step("fence", Verdict.OK, f"{data_dir} starts only read-only until the end")
            self._retire_marker()
            self._loss(control.timeline, diverged)
            safety = rewind_safety(
                data_dir, self.side.bin_dir, source_dsn, checkpoint=not self.options.dry_run
            )
            if not safety.safe and self.options.dry_run:
                safety = self._after_checkpoint(safety)
            # The search for the last common checkpoint stops at the first segment
            # missing from pg_wal; once that one is back, an older one may be
            # missing in turn (a checkpoint after the fork recycled them all), so
            # put back until nothing is missing or a round finds nothing new.
            for _ in range(MAX_WAL_ROUNDS):
                if safety.safe or not safety.facts.wal_missing:
                    break
                before = set(safety.facts.wal_missing)
                safety = self._wal_from_archive(safety, source_dsn)
                if before & set(safety.facts.wal_missing):
                    break
            if safety.safe:
                self._rewind(safety, source_dsn, control.state, new_timeline)
            else:
                self._fallback_reasons(safety)
        if not safety.safe and not self.options.dry_run:
            self._base_backup()
        if self.options.dry_run:
            return self.outcome
        self.outcome.seconds = self._monotonic() - started
        self.outcome.data_dir_bytes = bytes_under(data_dir)
        record_primary(self.config.logship.state_dir, self.name, self.new)
        self._step(
            "follow",
            Verdict.OK,
            f"{self.here} follows {self.new} (by {self.outcome.method}, "
            f"{self.outcome.seconds:.1f} s, {self.outcome.bytes_copied or 0} bytes copied of a "
            f"{self.outcome.data_dir_bytes} byte data directory); `logship run` at {self.new} "
            f"ships {self.new} -> {self.here}",
        )
        return self.outcome

    def _retire_marker(self) -> None:
        """This site's PROMOTED marker, from an earlier promotion of its own, is
        history now: the new primary must ship here (its WAL, a base backup)."""
        layout = SiteLayout.for_connector(self.config.sites[self.here].root, self.name)
        if not Path(layout.promoted_marker).exists():
            return
        if self.options.dry_run:
            self._step("marker", Verdict.WOULD, f"retire {layout.promoted_marker} into the journal")
            return
        connector = self.config.connectors[self.name]
        assert isinstance(connector, PostgresConnector)
        retire_promoted(self.config, connector, self.here)
        self._step("marker", Verdict.OK, f"{layout.promoted_marker} retired into the journal")

    def _stop_if_running(self) -> None:
        running = running_server(self.side.data_dir)
        if running is None:
            return
        if self.options.dry_run:
            self._step("stop", Verdict.WOULD, f"stop the server at {self.here} ({running})")
            return
        stop_server(self.side, self.here)
        self._step("stop", Verdict.OK, f"the server at {self.here} stopped")

    def _loss(self, timeline: int, diverged: int) -> None:
        report = loss_report(self.side.data_dir, self.side.bin_dir, timeline, diverged)
        self.outcome.report = report
        for line in report.summary_lines():
            self._step("lost", Verdict.INFO, line.strip())
        if not report.segments:
            return
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.config.logship.state_dir / REINSTATE_DIR / self.name / stamp
        if self.options.dry_run:
            self._step(
                "aside", Verdict.WOULD, f"copy {len(report.segments)} WAL file(s) to {aside}"
            )
            return
        copied = copy_aside(self.side.data_dir, report, aside)
        self.outcome.aside = aside
        self._step(
            "aside",
            Verdict.OK,
            f"{len(copied) - 1} WAL file(s) and report.json in {aside}: the lost commits "
            "can be read there with pg_waldump",
        )

    def _after_checkpoint(self, safety: RewindSafety) -> RewindSafety:
        """A dry run does not run CHECKPOINT on the new primary (the real run does,
        as the only change its checks make): that reason is what it would do."""
        facts = safety.facts
        if (
            facts.source_timeline is None
            or facts.source_checkpoint_timeline is None
            or facts.source_checkpoint_timeline >= facts.source_timeline
        ):
            return safety
        self._step(
            "checkpoint", Verdict.WOULD, f"CHECKPOINT at {self.new}, so pg_rewind sees the fork"
        )
        rest = [r for r in safety.reasons if "checkpoint" not in r.lower()]
        return RewindSafety(not rest, rest, facts, safety.notes)

    def _wal_from_archive(self, safety: RewindSafety, source_dsn: str) -> RewindSafety:
        """The old primary's WAL the rewind reads, recycled by its checkpoints: back
        from its own spool (archived, maybe never shipped) or from the copies it
        shipped to the other site (checked against their records), then checked again."""
        from logship.engines.postgresql.archive_fetch import fetch_segment
        from logship.ship.sftp import SftpTransport

        missing = safety.facts.wal_missing
        others = [r for r in safety.reasons if not any(seg in r for seg in missing)]
        spooled = {n: p for n in missing if (p := self._spooled(n)) is not None}
        layout = SiteLayout.for_connector(self.config.sites[self.new].root, self.name)
        transport = SftpTransport(self.config.sites[self.new])
        try:
            remote = [n for n in missing if n not in spooled]
            shipped = [n for n in remote if transport.read_bytes(layout.record_path(n)) is not None]
            found = len(spooled) + len(shipped)
            if found < len(missing) or self.options.dry_run:
                self._step(
                    "archive",
                    Verdict.WOULD if found == len(missing) else Verdict.INFO,
                    f"of {len(missing)} WAL file(s) the rewind reads (first {missing[0]}), "
                    f"{len(spooled)} are in this site's spool and {len(shipped)} in the "
                    f"archive at {self.new}: put back into pg_wal first",
                )
                if found == len(missing) and not others:
                    return RewindSafety(True, [], safety.facts, safety.notes)
                return safety
            wal_dir = self.side.data_dir / "pg_wal"
            for name, path in spooled.items():
                write_bytes_atomically(wal_dir / name, path.read_bytes())
                (wal_dir / name).chmod(0o600)
            for name in shipped:
                fetch_segment(transport, layout, name, wal_dir)
        finally:
            transport.close()
        self._step(
            "archive",
            Verdict.OK,
            f"{len(missing)} WAL file(s) the rewind reads put back into pg_wal "
            f"({len(spooled)} from this site's spool, {len(shipped)} from the archive at "
            f"{self.new}, each checked against its manifest record)",
        )
        return rewind_safety(self.side.data_dir, self.side.bin_dir, source_dsn)

    def _spooled(self, name: str) -> Path | None:
        """`name` as archive-wal left it in this site's spool, or kept after shipping."""
        spool = self.config.spool_dir(self.name)
        for path in (spool / name, kept_path(spool, name)):
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink() and path.stat().st_size > 0:
                    return path
        return None

    def _rewind(self, safety: RewindSafety, source_dsn: str, state: str, timeline: int) -> None:
        facts = safety.facts
        for note in safety.notes:
            self._step("rewind", Verdict.INFO, note)
        self._step(
            "rewind",
            self._would,
            f"pg_rewind is safe ({facts.block_tracking}; the new primary checkpointed on "
            f"timeline {facts.source_timeline}; the WAL it needs is there)",
        )
        if self.options.dry_run:
            return
        data_dir = self.side.data_dir
        if state in CRASHED_STATES:
            # pg_rewind's own crash recovery runs single-user, which refuses the
            # fence's standby mode: recovered once, read-only, then stopped cleanly.
            start_server(
                pg_ctl(self.side), data_dir, data_dir / LOG_NAME, what="the fenced old primary"
            )
            self._stop_if_running()
        outcome = run_rewind(
            data_dir,
            self.side.bin_dir,
            source_dsn,
            dry_run=False,
            restore_target_wal=bool(facts.wal_from_restore_command),
        )
        # pg_rewind took the fence away with the old files: back before anything else.
        fence(data_dir, FenceReason(self.name, "failover", self.new, timeline))
        self.outcome.method = "rewind"
        self.outcome.bytes_copied = outcome.bytes_copied
        self._step(
            "rewind",
            Verdict.OK,
            f"pg_rewind copied {outcome.bytes_copied} bytes in {outcome.seconds:.1f} s",
        )
        oriented = config_for(self.config, "standby")
        connector = oriented.connectors[self.name]
        assert isinstance(connector, PostgresConnector)
        start_following(oriented, connector, self.side)

    def _fallback_reasons(self, safety: RewindSafety) -> None:
        self.outcome.fallback_reasons = list(safety.reasons)
        for reason in safety.reasons:
            self._step("rewind", Verdict.INFO, f"not safe: {reason}")
        self._step(
            "base backup",
            self._would,
            f"a fresh base backup from {self.new} replaces {self.side.data_dir} (kept aside), "
            f"because pg_rewind is not safe: {safety.reasons[0]}",
        )

    def _base_backup(self) -> None:
        from logship.engines.postgresql.standby_restore import restore_standby
        from logship.ship.sftp import SftpTransport

        data_dir = self.side.data_dir
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = data_dir.with_name(f"{data_dir.name}.before-reinstate-{stamp}")
        data_dir.rename(kept)
        self._step("aside", Verdict.OK, f"the old data directory is kept as {kept}")
        site = self.config.sites[self.new]
        transport = SftpTransport(site)
        try:
            status, _, err = transport.run_command(
                [*site.command, "base-backup", self.name],
                timeout=BASE_BACKUP_TIMEOUT_S,
                limit=1 << 20,
            )
        finally:
            transport.close()
        if status != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise OperationFailed(
                f"base backup at {self.new} failed: {lines[-1][:300] if lines else status}. "
                f"State: {self.new} is the primary; {self.here} has no data directory (the "
                f"old one is {kept}). Next: run `logship reinstate {self.name}` again"
            )
        restored = restore_standby(config_for(self.config, "standby"), self.name)
        self.outcome.method = "base backup"
        self.outcome.bytes_copied = restored.record.size
        self._step(
            "base backup",
            Verdict.OK,
            f"backup {restored.record.backup_id} from {self.new} restored and started "
            f"({restored.record.size} bytes)",
        )
