"""PostgreSQL: WAL segments archived by `archive_command` or `basic_archive`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from logship import walnames
from logship.config.model import ConnectorBase, Seconds, Strict
from logship.engines import BackgroundJob


class PrimarySection(Strict):
    dsn: str = Field(min_length=1)
    bin_dir: Path | None = None
    #: how the standby site reaches the primary over TCP, for `promote`'s "is the
    #: primary down?" gate: `dsn` is written for the primary site and often uses a
    #: local socket there, which proves nothing at the standby site
    check_dsn: str | None = Field(default=None, min_length=1)


class StandbySection(Strict):
    dsn: str = Field(min_length=1)
    data_dir: Path
    bin_dir: Path | None = None


class PostgresConnector(ConnectorBase):
    kind: Literal["postgresql"]
    primary: PrimarySection
    standby: StandbySection
    #: a row the daemon rewrites on the primary, read back on the standby: apply lag
    heartbeat: bool = True
    heartbeat_interval: Seconds = 1.0


@dataclass(frozen=True)
class PostgresEngine:
    kind: str = "postgresql"
    config_model: type[ConnectorBase] = PostgresConnector

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
        from logship.engines.pg_probe import PrimaryProbe

        probe = PrimaryProbe(connector.name, connector.primary.dsn, heartbeat=connector.heartbeat)
        return [
            BackgroundJob(
                name=f"primary-{connector.name}",
                connector=connector.name,
                interval=connector.heartbeat_interval,
                run=probe.run,
                close=probe.close,
            )
        ]


ENGINE = PostgresEngine()
