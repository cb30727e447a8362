"""PostgreSQL: WAL segments archived by `archive_command` or `basic_archive`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StrictBool

from logship.config.model import Config, ConnectorBase, Seconds, SiteConfig, Strict, WaitSeconds
from logship.config.sizes import parse_size
from logship.engines.postgresql import walnames
from logship.engines.registry import BackgroundJob, DaemonWorkers, SiteSampler, WorkerContext

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
    from logship.checks import EngineChecks
    from logship.jobs import ActionOutcome, ActionRun
    from logship.ready_source import ReadySource
    from logship.ship.site_worker import ShipTarget
    from logship.status.model import ConnectorStatus


class PrimarySection(Strict):
    #: libpq connection string of the primary, as seen at the primary site
    dsn: str = Field(min_length=1)
    #: the folder holding PostgreSQL's programs (pg_basebackup, ...); unset: Debian's
    #: /usr/lib/postgresql/<major>/bin, then `pg_config --bindir`, then PATH
    bin_dir: Path | None = None
    #: how the standby site reaches the primary over TCP, for `promote`'s "is the
    #: primary down?" gate: `dsn` is written for the primary site and often uses a
    #: local socket there, which proves nothing at the standby site
    check_dsn: str | None = Field(default=None, min_length=1)
    #: the primary's data directory at the primary site; with it the daemon ships
    #: each WAL file from pg_wal as soon as PostgreSQL marks it ready (read-ahead),
    #: and archive-wal only confirms what is already at the site. The daemon must
    #: be able to read pg_wal (PostgreSQL's OS user, or its group with group access)
    data_dir: Path | None = None
    #: with data_dir: how long archive-wal waits for the read-ahead to make a
    #: segment durable at the site before it copies the segment into the spool
    #: (it waits only while the daemon keeps up; 0: never waits)
    archive_wait: WaitSeconds = 10.0


class StandbySection(Strict):
    #: libpq connection string of the standby, as seen at the standby site; the same
    #: database as the primary's, so that the replayed heartbeat can be read there
    dsn: str = Field(min_length=1)
    #: the standby's data directory (`standby restore` fills it)
    data_dir: Path
    #: PostgreSQL's programs at the standby site; unset: as for the primary
    bin_dir: Path | None = None


class SideSection(Strict):
    """One side of a connector written with `[sides.SITE]`: the database at that
    site, whichever role it has now. Both sites carry the same files; logship finds
    which side is the primary from the databases themselves."""

    #: libpq connection string of this side's database, as seen at its own site
    dsn: str = Field(min_length=1)
    #: its data directory at its site
    data_dir: Path
    #: PostgreSQL's programs at its site; unset: found as for `[primary] bin_dir`
    bin_dir: Path | None = None
    #: how the other site reaches this database over TCP (promote's "is the primary
    #: down?" gate, switchover's gates)
    check_dsn: str | None = Field(default=None, min_length=1)
    #: as the primary: ship WAL from pg_wal as soon as it is ready (read-ahead)
    read_ahead: StrictBool = True
    #: as the primary, with read_ahead: how long archive-wal waits for it
    archive_wait: WaitSeconds = 10.0


def orient_sides(table: dict[str, Any], primary: str, standby: str) -> dict[str, Any]:
    """A `[sides.*]` connector table in the shape of `site` + `[primary]` +
    `[standby]`, with `primary` the side that is the primary now."""
    sides = table["sides"]
    was, will = sides.get(primary), sides.get(standby)
    out = dict(table)
    out["site"] = standby
    out["primary_side"] = primary
    if isinstance(was, dict):
        out["primary"] = {
            key: was[key] for key in ("dsn", "bin_dir", "check_dsn", "archive_wait") if key in was
        }
        if was.get("read_ahead", True) is True and "data_dir" in was:
            out["primary"]["data_dir"] = was["data_dir"]
    if isinstance(will, dict):
        out["standby"] = {key: will[key] for key in ("dsn", "data_dir", "bin_dir") if key in will}
    return out


class RetentionSection(Strict):
    """Which base backups `retention` keeps; WAL older than the oldest kept one goes.

    A backup is kept when it is among the newest `keep_backups` or younger than
    `keep_within` (either rule keeps it). The newest complete backup is always kept.
    """

    #: the newest N base backups stay
    keep_backups: int | None = Field(default=2, ge=1)
    #: and any younger than this
    keep_within: Seconds | None = Field(default=None, gt=0)


class DrillSection(Strict):
    """The restore drill at the standby site: a scratch restore, replay and query."""

    #: scratch folder at the standby site (default: `drill/` under the site's root)
    scratch_dir: Path | None = None
    #: the query that must succeed on the drilled copy
    query: str = Field(default="select count(*) from pg_class", min_length=1)
    #: give up (and fail the drill) after this long
    timeout: Seconds = Field(default=3600.0, gt=0)


Bytes = Annotated[int, BeforeValidator(parse_size)]


class StreamingSection(Strict):
    """WAL streamed as it is written, through the SSH link: the standby's walreceiver
    connects to a port that sshd opens on the site's loopback, and the daemon joins
    each such connection to the primary. Shipped segments stay the ground truth."""

    #: stream WAL to the standby as it is written
    enabled: StrictBool = False
    #: a commit returns only when the DR standby has flushed it
    synchronous: StrictBool = False
    #: with `synchronous`: "availability" drops the primary to async after
    #: `fallback_after` without the standby and returns once it is caught up;
    #: "protection" keeps commits waiting for as long as the standby is away
    protection: Literal["availability", "protection"] = "availability"
    #: how long "availability" lets commits wait for an absent standby
    fallback_after: Seconds = 10.0
    #: the most WAL the replication slot may hold back at the primary
    #: (the primary's `max_slot_wal_keep_size` must not be larger)
    max_slot_wal_keep: Bytes = 4 << 30
    #: the port sshd at the site listens on (127.0.0.1 only) for the standby
    site_port: int = Field(default=5499, ge=1024, le=65535)
    #: the replication role at the primary that the standby connects as
    user: str = Field(default="logship_replication", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    #: at the standby site: a libpq password file (0600) with that role's password,
    #: which the standby's walreceiver reads; unset: the role needs no password there
    passfile: Path | None = None


class PostgresConnector(ConnectorBase):
    kind: Literal["postgresql"]
    #: the two sides, by site name (instead of `site` + `[primary]` + `[standby]`)
    sides: dict[str, SideSection] | None = None
    #: with sides: the side that is the primary now (found, never written by hand)
    primary_side: str | None = None
    primary: PrimarySection
    standby: StandbySection
    retention: RetentionSection = RetentionSection()
    drill: DrillSection = DrillSection()
    #: a row the daemon rewrites on the primary, read back on the standby: apply lag
    heartbeat: bool = True
    #: how often the heartbeat row is rewritten
    heartbeat_interval: Seconds = 1.0
    #: shipped segments stay in the spool (up to this much) until the standby has
    #: restored them, so one found corrupt at the site is shipped again; 0: none
    keep_shipped_mib: int = Field(default=1024, ge=0)
    streaming: StreamingSection = StreamingSection()


@dataclass(frozen=True)
class PostgresEngine:
    kind: str = "postgresql"
    config_model: type[ConnectorBase] = PostgresConnector
    schedule_actions: frozenset[str] = frozenset({"base-backup", "retention", "drill"})
    path_keys: frozenset[str] = frozenset({"data_dir", "bin_dir", "scratch_dir", "passfile"})
    joins_consistency_points: bool = False
    two_sided: bool = True

    def orient_sides(self, table: dict[str, Any], primary: str, standby: str) -> dict[str, Any]:
        return orient_sides(table, primary, standby)

    def find_primary(self, connector: ConnectorBase, here: str) -> str | None:
        assert isinstance(connector, PostgresConnector)
        from logship.engines.postgresql.roles import found_primary

        return found_primary(connector, here)

    def guard_standby_side(self, config: Config, connector: ConnectorBase) -> str | None:
        assert isinstance(connector, PostgresConnector)
        from logship.engines.postgresql.roles import fence_if_old_primary

        return fence_if_old_primary(config, connector)

    def accepts(self, name: str) -> bool:
        return walnames.is_archivable(name)

    def ship_order(self, name: str) -> str:
        parsed = walnames.parse(name)
        if parsed is None:
            raise ValueError(f"{name!r} is not a WAL file name")
        timeline, history_last, _ = parsed.sort_key
        return f"{timeline:08X}.{history_last}.{name}"

    def background_jobs(self, connector: ConnectorBase) -> list[BackgroundJob]:
        assert isinstance(connector, PostgresConnector)
        from logship.engines.postgresql.probe import PrimaryProbe
        from logship.engines.postgresql.streaming.settings import standby_name

        probe = PrimaryProbe(
            connector.name,
            connector.primary.dsn,
            heartbeat=connector.heartbeat,
            stale_slot=None if connector.streaming.enabled else standby_name(connector.name),
        )
        return [
            BackgroundJob(
                name=f"primary-{connector.name}",
                connector=connector.name,
                interval=connector.heartbeat_interval,
                run=probe.run,
                close=probe.close,
            )
        ]

    def site_problem(self, connector: ConnectorBase, site: SiteConfig) -> str | None:
        return None

    def spool_dir(self, config: Config, connector: ConnectorBase) -> Path | None:
        # WAL arrives there through archive-wal or basic_archive.
        return config.spool_dir(connector.name)

    def kept_after_shipping(self, connector: ConnectorBase) -> int:
        assert isinstance(connector, PostgresConnector)
        return connector.keep_shipped_mib * 1024 * 1024

    def ready_source(self, connector: ConnectorBase) -> ReadySource | None:
        assert isinstance(connector, PostgresConnector)
        if connector.primary.data_dir is None:
            return None
        from logship.ready_source import ReadySource

        # pg_wal is often a link to a disk of its own: followed once, here.
        wal_dir = (connector.primary.data_dir / "pg_wal").resolve()
        return ReadySource(
            connector=connector.name,
            files_dir=wal_dir,
            marks_dir=wal_dir / "archive_status",
            mark_suffix=".ready",
            accepts=walnames.is_archivable,
            wait_s=connector.primary.archive_wait,
        )

    def checks(self) -> EngineChecks:
        from logship.engines.postgresql.checks import POSTGRESQL_CHECKS

        return POSTGRESQL_CHECKS

    def run_action(self, action: str, run: ActionRun) -> ActionOutcome:
        from logship.engines.postgresql.actions import run_action

        return run_action(action, run)

    def status(
        self, connector: ConnectorBase, catalog: Catalog | None, now: float, *, remember: bool
    ) -> ConnectorStatus:
        assert isinstance(connector, PostgresConnector)
        from logship.engines.postgresql.status import postgres_status

        return postgres_status(connector, catalog, now, remember=remember)

    def null_reasons(self, status: ConnectorStatus) -> list[str]:
        from logship.engines.postgresql.status import null_reasons

        return null_reasons(status)

    def daemon_workers(self, connector: ConnectorBase, context: WorkerContext) -> DaemonWorkers:
        # Its WAL ships from the spool on the site's one shipping worker, which
        # also runs its standby sampling (`site_sampler`); streaming has a thread
        # and an SSH connection of its own.
        assert isinstance(connector, PostgresConnector)
        if not connector.streaming.enabled:
            return DaemonWorkers(site_shipping=True)
        from logship.engines.postgresql.streaming.worker import StreamWorker

        worker = StreamWorker(
            connector,
            context.config.site_of(connector),
            context.catalog,
            context.clock,
            context.stop,
        )
        return DaemonWorkers(threads=(worker,), site_shipping=True)

    def site_sampler(
        self,
        site: SiteConfig,
        targets: Sequence[ShipTarget],
        catalog: Catalog,
        clock: Callable[[], float],
        interval: float,
        wake: Callable[[], None],
    ) -> SiteSampler:
        from logship.engines.postgresql.site_sampling import StandbySampler

        return StandbySampler(site, targets, catalog, clock, interval, wake)


ENGINE = PostgresEngine()
