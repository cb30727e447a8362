"""Lag and RPO of a files connector (as docs/reference/status-json.md defines them
for a database, applied to a files connector's source folder).

Exposure is the age of the oldest change not yet durable at the site: that is
what a lost primary site would take with it. There is no replay at the site,
so apply lag and "last applied" do not apply and stay null.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from logship import consistency
from logship.engines.files import rows as files_rows
from logship.engines.files.rows import FilesSummary, show_path
from logship.status.figures import SiteRow, iso_utc
from logship.status.jobs import JobFacts, job_fields, scheduled_jobs
from logship.status.model import ConnectorStatus
from logship.status.state import measured_fields

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
    from logship.engines.files.engine import FilesConnector

NOT_APPLICABLE = "not applicable to a files connector"


def files_status(
    *,
    name: str,
    kind: str,
    site: str,
    rpo_target_s: float,
    now: float,
    summary: FilesSummary | None,
    site_status: SiteRow | None,
    jobs: JobFacts | None = None,
    points: PointFacts | None = None,
) -> ConnectorStatus:
    """`summary` is None without a catalog: then nothing is known and figures are null."""
    exposure: float | None = None
    if summary is not None:
        oldest = summary.oldest_pending_at
        exposure = 0.0 if oldest is None else max(0.0, now - oldest)
    reachable = None if site_status is None else bool(site_status.reachable)
    site_error = site_status.error if site_status is not None else None
    if site_error is None and summary is not None and summary.failing:
        site_error = f"{summary.failing} path(s) failing, first: {summary.first_error}"
    return ConnectorStatus(
        **measured_fields(
            name=name,
            kind=kind,
            site=site,
            rpo_target_s=rpo_target_s,
            rpo_exposure_s=exposure,
            transport_lag_s=exposure,
            site_reachable=reachable,
        ),
        apply_lag_s=None,
        pending_files=summary.pending_files if summary is not None else None,
        pending_bytes=summary.pending_bytes if summary is not None else None,
        last_shipped=(
            show_path(summary.last_shipped)
            if summary is not None and summary.last_shipped is not None
            else None
        ),
        last_applied=None,
        last_base_backup_at=None,
        site_error=site_error,
        **job_fields(jobs or JobFacts()),
        **_point_fields(points),
    )


@dataclass(frozen=True)
class PointFacts:
    """A files connector's sync generation and consistency points, from the catalog."""

    generation: int
    newest_complete: tuple[str, float] | None  # point id, completed at
    open: int


def _point_fields(points: PointFacts | None) -> dict[str, Any]:
    if points is None:
        return {}
    newest = points.newest_complete
    return {
        "sync_generation": points.generation,
        "consistency_point": newest[0] if newest else None,
        "consistency_at": iso_utc(newest[1]) if newest else None,
        "consistency_open": points.open,
    }


def connector_files_status(
    connector: FilesConnector, catalog: Catalog | None, now: float
) -> ConnectorStatus:
    """From the catalog; None before any daemon created it. A files connector has no
    spool, no WAL and no standby database."""
    known: dict[str, Any] = {"summary": None, "site_status": None}
    if catalog is not None:
        from logship.engines.files.verify_rows import last_verify

        known = {
            "summary": files_rows.summary(catalog, connector.name),
            "site_status": catalog.site_status(connector.site, connector.name),
            "jobs": replace(
                scheduled_jobs(catalog, connector.name),
                last_verify=last_verify(catalog, connector.name),
            ),
            "points": _point_facts(catalog, connector.name),
        }
    return files_status(
        name=connector.name,
        kind=connector.kind,
        site=connector.site,
        rpo_target_s=connector.rpo,
        now=now,
        **known,
    )


def _point_facts(catalog: Catalog, connector: str) -> PointFacts:
    newest = consistency.newest_complete(catalog, connector)
    return PointFacts(
        generation=consistency.current_generation(catalog, connector),
        newest_complete=(
            (newest.point_id, newest.complete_at)
            if newest is not None and newest.complete_at is not None
            else None
        ),
        open=len(consistency.open_parts(catalog, connector)),
    )


def null_reasons(status: ConnectorStatus) -> list[str]:
    """Why a figure of a files connector shows as unknown (beyond no catalog)."""
    return [f"apply lag, last applied: {NOT_APPLICABLE}"]
