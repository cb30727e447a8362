"""The catalog's record of `verify` runs (the `FilesVerify` table).

`status`, the dashboard and the alerts read the newest finished run from here.
"""

from __future__ import annotations

import json

from sqlalchemy import select, update

from logship.catalog.models import FilesVerify
from logship.catalog.store import Catalog
from logship.engines.files.verify import VerifyReport

#: differences kept in the catalog per run; the counts are always whole
DETAIL_LIMIT = 50
FINISHED_STATES = ("clean", "drift", "failed")


def start_verify(catalog: Catalog, connector: str, now: float) -> int:
    with catalog.session() as s:
        row = FilesVerify(connector=connector, started_at=now, state="running")
        s.add(row)
        s.commit()
        return row.id


def finish_verify(
    catalog: Catalog,
    verify_id: int,
    *,
    now: float,
    report: VerifyReport | None = None,
    error: str | None = None,
) -> None:
    """Mark a run clean or drift (from `report`), or failed (with `error`): a run that
    could not compare says nothing about drift, so its counts stay null."""
    values: dict[str, object] = {"finished_at": now}
    if error is not None or report is None:
        values.update(state="failed", error=error or "no result")
    else:
        detail = report.to_json(limit=DETAIL_LIMIT)
        values.update(
            state=report.state,
            checked=report.checked,
            drift=report.drift,
            pending=len(report.pending),
            detail=json.dumps(
                {
                    "kept": len(report.kept),
                    "pending_known": report.pending_known,
                    "differences": detail["differences"],
                }
            ),
            error=None,
        )
    with catalog.session() as s:
        s.execute(update(FilesVerify).where(FilesVerify.id == verify_id).values(**values))
        s.commit()


def last_verify(catalog: Catalog, connector: str) -> FilesVerify | None:
    """The newest run that finished (clean, drift or failed); None before the first."""
    query = select(FilesVerify).where(
        FilesVerify.connector == connector, FilesVerify.state.in_(FINISHED_STATES)
    )
    with catalog.session() as s:
        return s.scalars(
            query.order_by(FilesVerify.started_at.desc(), FilesVerify.id.desc()).limit(1)
        ).first()
