"""The files connector: a source folder copied to a target folder at the standby site.

Unlike the database engine nothing goes through a spool: the tree itself is
watched, and the catalog keeps one row per path (type, size, mtime, mode,
sha256) as the state map the target folder converges on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictBool, field_validator

from logship.config.model import Config, ConnectorBase, Seconds, SiteConfig, Strict
from logship.engines.registry import BackgroundJob, DaemonWorkers, SiteSampler, WorkerContext

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
    from logship.checks import EngineChecks
    from logship.jobs import ActionOutcome, ActionRun
    from logship.ready_source import ReadySource
    from logship.ship.site_worker import ShipTarget
    from logship.status.model import ConnectorStatus


class FilesStandby(Strict):
    #: where the files connector's copy lives at the standby site (absolute there)
    target: PurePosixPath

    @field_validator("target")
    @classmethod
    def _absolute(cls, value: PurePosixPath) -> PurePosixPath:
        if not value.is_absolute() or value == PurePosixPath("/"):
            raise ValueError("must be an absolute folder at the standby site, not /")
        return value


class FilesConnector(ConnectorBase):
    kind: Literal["files"]
    #: the folder to copy to the site, watched recursively
    source: Path
    #: gitignore-style patterns, relative to `source`; matching paths never ship
    exclude: list[str] = Field(default_factory=list)
    #: propagate deletions (and the old name of a rename) to the site
    delete: bool = True
    #: a changed file ships once it has not changed for this long
    settle: Seconds = Field(default=0.5, ge=0)
    #: keep group and other write at the site (setuid, setgid and sticky never
    #: reach it; see logship.engines.files.modes). A TOML boolean only: "yes" or 1 for a
    #: key that widens permissions is refused rather than read as true.
    keep_write_bits: StrictBool = False
    standby: FilesStandby

    @field_validator("exclude")
    @classmethod
    def _patterns_compile(cls, value: list[str]) -> list[str]:
        from logship.engines.files.exclude import ExcludeRules

        ExcludeRules(value)  # raises ValueError naming the bad pattern
        return value


@dataclass(frozen=True)
class FilesEngine:
    kind: str = "files"
    config_model: type[ConnectorBase] = FilesConnector
    schedule_actions: frozenset[str] = frozenset({"verify"})
    path_keys: frozenset[str] = frozenset({"source"})
    #: a database's point pairs its position with this connector's generation
    joins_consistency_points: bool = True
    two_sided: bool = False

    def orient_sides(self, table: dict[str, Any], primary: str, standby: str) -> dict[str, Any]:
        raise NotImplementedError("a files connector has one source and one site")

    def find_primary(self, connector: ConnectorBase, here: str) -> str | None:
        return None

    def guard_standby_side(self, config: Config, connector: ConnectorBase) -> str | None:
        return None

    def accepts(self, name: str) -> bool:
        return False

    def ship_order(self, name: str) -> str:
        return name

    def background_jobs(self, connector: ConnectorBase) -> list[BackgroundJob]:
        return []

    def site_problem(self, connector: ConnectorBase, site: SiteConfig) -> str | None:
        if site.restricted:
            # A files connector follows the source: it must delete and replace at the site.
            return (
                f"site {site.name!r} is restricted (the primary's key may only add new files "
                "there), but a files connector must delete and replace files at its site; use a "
                "site without `restricted = true`"
            )
        return None

    def spool_dir(self, config: Config, connector: ConnectorBase) -> Path | None:
        # The files connector watches `source` itself: nothing goes through a spool.
        return None

    def kept_after_shipping(self, connector: ConnectorBase) -> int:
        return 0

    def ready_source(self, connector: ConnectorBase) -> ReadySource | None:
        return None

    def checks(self) -> EngineChecks:
        from logship.engines.files.checks import FILES_CHECKS

        return FILES_CHECKS

    def run_action(self, action: str, run: ActionRun) -> ActionOutcome:
        from logship.engines.files.actions import run_action

        return run_action(action, run)

    def status(
        self, connector: ConnectorBase, catalog: Catalog | None, now: float, *, remember: bool
    ) -> ConnectorStatus:
        assert isinstance(connector, FilesConnector)
        from logship.engines.files.status import connector_files_status

        # Nothing to remember: the tree's figures are aggregates the catalog computes.
        return connector_files_status(connector, catalog, now)

    def null_reasons(self, status: ConnectorStatus) -> list[str]:
        from logship.engines.files.status import null_reasons

        return null_reasons(status)

    def daemon_workers(self, connector: ConnectorBase, context: WorkerContext) -> DaemonWorkers:
        """One worker (a thread and an SSH link) per connector: it watches the tree
        and ships it itself."""
        assert isinstance(connector, FilesConnector)
        from logship.engines.files.worker import FilesWorker

        config = context.config
        worker = FilesWorker(
            connector,
            config.site_of(connector),
            context.catalog,
            context.connect,
            context.clock,
            config.logship.reconcile_interval,
            context.stop,
        )
        return DaemonWorkers(threads=(worker,))

    def site_sampler(
        self,
        site: SiteConfig,
        targets: Sequence[ShipTarget],
        catalog: Catalog,
        clock: Callable[[], float],
        interval: float,
        wake: Callable[[], None],
    ) -> SiteSampler | None:
        return None  # nothing of it ships on a site's shipping worker


ENGINE = FilesEngine()


def files_connector(config: Config, name: str) -> FilesConnector:
    return config.connector_of_kind(
        name, FilesConnector, 'this works on file trees, for kind = "files" connectors'
    )
