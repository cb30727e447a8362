"""Plain values the tests build again and again: WAL names, connector statuses,
base backup records."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from logship.manifest import BackupRecord, SiteLayout
from logship.ship.localdir import LocalDirTransport
from logship.status.model import ConnectorStatus
from logship.status.state import State


def wal(number: int, timeline: int = 1) -> str:
    """Segment `number` of a 16 MiB cluster on `timeline`."""
    return f"{timeline:08X}{number // 256:08X}{number % 256:08X}"


def connector_status(
    name: str,
    state: State,
    *,
    rpo: float,
    exposure: float | None,
    transport_lag: float | None,
    apply_lag: float | None,
    last_shipped: str | None = None,
) -> ConnectorStatus:
    """A PostgreSQL connector's status at site dr, with nothing pending, applied or
    backed up."""
    return ConnectorStatus(
        name=name,
        kind="postgresql",
        site="dr",
        state=state,
        rpo_target_s=rpo,
        rpo_exposure_s=exposure,
        transport_lag_s=transport_lag,
        apply_lag_s=apply_lag,
        pending_files=0,
        pending_bytes=0,
        last_shipped=last_shipped,
        last_applied=None,
        last_base_backup_at=None,
    )


def backup_record(backup_id: str, finished_at: float, start_wal: str | None) -> BackupRecord:
    """Connector orders' base backup `backup_id`, finished at `finished_at` after a
    minute, starting at `start_wal`."""
    return BackupRecord(
        backup_id=backup_id,
        connector="orders",
        started_at=finished_at - 60,
        finished_at=finished_at,
        stored_name="base.tar.zst",
        stored_size=1000,
        stored_sha256="x" * 64,
        size=5000,
        compression="zstd",
        pg_version="15",
        start_wal=start_wal,
    )


def postgres_connector(name: str = "x", **sections: Any) -> Any:
    """A valid PostgreSQL connector model; `sections` replace or add keys."""
    from logship.engines.postgresql.engine import PostgresConnector

    return PostgresConnector.model_validate(
        {
            "name": name,
            "kind": "postgresql",
            "site": "dr",
            "rpo": 60,
            "primary": {"dsn": "host=/run/pg port=5432"},
            "standby": {"dsn": "host=/run/pg port=5433", "data_dir": "/srv/standby"},
            **sections,
        }
    )


def local_site(root: Path) -> tuple[LocalDirTransport, SiteLayout]:
    """A site in a local folder (`root/incoming`), with connector "main"'s folders."""
    layout = SiteLayout.for_connector(PurePosixPath(root / "incoming"), "main")
    transport = LocalDirTransport()
    transport.makedirs(layout.wal_dir)
    transport.makedirs(layout.manifest_dir)
    return transport, layout
