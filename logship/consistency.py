"""Consistency points: a database LSN paired with a files connector's sync generation.

A point is taken at each base backup (its stop LSN) and on demand (`logship
mark`, the primary's current LSN). It pairs the database connector with every
files connector at the same site. Each files connector completes its own
part: it scans its source folder, then waits until every change that scan saw
is durable at the site, and names the generation at which that held. The part
is then written to the site, where `promote` reads it without the primary:
"the database you promoted goes with file generation G; these paths changed
after it".

The file state is the source folder as scanned when the files connector took up
the point, which is at most a tick after the LSN was read; a path changed again
before it shipped goes with its newer content. Files are not transactional, so a point
is as close as a files connector can pair them, and the record says how close
(`scanned_at` against `taken_at`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from logship.catalog.models import ConsistencyPoint, FilesGeneration, FilesPath
from logship.catalog.store import Catalog
from logship.config.model import Config
from logship.engines.postgresql import walnames
from logship.engines.registry import engine_for
from logship.jsonin import load_object
from logship.manifest import SiteLayout


def point_id_for(taken_at: float) -> str:
    # Microseconds: two points of one database a moment apart stay distinct.
    return datetime.fromtimestamp(taken_at, UTC).strftime("%Y%m%dT%H%M%S%fZ")


def files_connectors_for(config: Config, database: str) -> list[str]:
    """The connectors a database's consistency points cover: those at its site whose
    engine joins them (files connectors)."""
    site = config.connector(database).site
    return sorted(
        name
        for name, connector in config.connectors.items()
        if connector.site == site and engine_for(connector.kind).joins_consistency_points
    )


def record_point(
    catalog: Catalog,
    *,
    database: str,
    files: Sequence[str],
    lsn: str,
    timeline: int | None,
    taken_at: float,
    reason: str,
) -> str:
    """Record a point for the files connectors in `files` to complete; returns its id."""
    point_id = point_id_for(taken_at)
    with catalog.session() as s:
        for name in files:
            s.add(
                ConsistencyPoint(
                    point_id=point_id,
                    database=database,
                    files=name,
                    lsn=lsn,
                    timeline=timeline,
                    taken_at=taken_at,
                    reason=reason,
                )
            )
        s.commit()
    return point_id


def parts_of(catalog: Catalog, point_id: str) -> list[ConsistencyPoint]:
    with catalog.session() as s:
        query = select(ConsistencyPoint).where(ConsistencyPoint.point_id == point_id)
        return list(s.scalars(query.order_by(ConsistencyPoint.files)).all())


def open_parts(catalog: Catalog, files: str) -> list[ConsistencyPoint]:
    """The parts a files connector has yet to complete, oldest first."""
    with catalog.session() as s:
        query = select(ConsistencyPoint).where(
            ConsistencyPoint.files == files, ConsistencyPoint.complete_at.is_(None)
        )
        return list(s.scalars(query.order_by(ConsistencyPoint.taken_at)).all())


def newest_complete(catalog: Catalog, files: str) -> ConsistencyPoint | None:
    with catalog.session() as s:
        query = (
            select(ConsistencyPoint)
            .where(ConsistencyPoint.files == files, ConsistencyPoint.complete_at.is_not(None))
            .order_by(ConsistencyPoint.complete_at.desc())
            .limit(1)
        )
        return s.scalars(query).first()


def mark_scanned(catalog: Catalog, part_ids: Sequence[int], scanned_at: float) -> None:
    with catalog.session() as s:
        s.execute(
            update(ConsistencyPoint)
            .where(ConsistencyPoint.id.in_(part_ids))
            .values(scanned_at=scanned_at)
        )
        s.commit()


def mark_complete(catalog: Catalog, part_id: int, generation: int, now: float) -> None:
    with catalog.session() as s:
        s.execute(
            update(ConsistencyPoint)
            .where(ConsistencyPoint.id == part_id)
            .values(generation=generation, complete_at=now)
        )
        s.commit()


def durable_since(catalog: Catalog, files: str, scanned_at: float) -> bool:
    """Every change of the tree seen by the scan at `scanned_at` is durable at the site."""
    with catalog.session() as s:
        waiting = s.scalars(
            select(FilesPath.id)
            .where(
                FilesPath.connector == files,
                FilesPath.state != "shipped",
                FilesPath.changed_at <= scanned_at,
            )
            .limit(1)
        ).first()
    return waiting is None


def current_generation(catalog: Catalog, files: str) -> int:
    with catalog.session() as s:
        row = s.get(FilesGeneration, files)
        return 0 if row is None else row.generation


def next_generation(catalog: Catalog, files: str, now: float) -> int:
    """Count one more round that changes the site; returns its number."""
    with catalog.session() as s:
        row = s.get(FilesGeneration, files)
        if row is None:
            row = FilesGeneration(connector=files, generation=0, at=now)
            s.add(row)
        row.generation += 1
        row.at = now
        s.commit()
        return row.generation


# -- at the site ------------------------------------------------------------------------


@dataclass(frozen=True)
class SitePoint:
    """One files connector's completed part, as written at the site."""

    point_id: str
    database: str
    files: str
    lsn: str
    timeline: int | None
    taken_at: float
    reason: str
    scanned_at: float
    generation: int
    complete_at: float

    @classmethod
    def from_row(cls, row: ConsistencyPoint, *, generation: int, complete_at: float) -> SitePoint:
        assert row.scanned_at is not None
        return cls(
            row.point_id,
            row.database,
            row.files,
            row.lsn,
            row.timeline,
            row.taken_at,
            row.reason,
            row.scanned_at,
            generation,
            complete_at,
        )

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> SitePoint:
        return cls(**{name: content[name] for name in cls.__dataclass_fields__})

    @property
    def lsn_value(self) -> int:
        return walnames.lsn_to_int(self.lsn)


def read_site_points(site_root: Path, files: str) -> tuple[list[SitePoint], list[str]]:
    """The completed points of a files connector at this site, and unreadable ones."""
    folder = Path(SiteLayout.for_connector(site_root.as_posix(), files).consistency_dir)
    points: list[SitePoint] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.json")):
        try:
            point = SitePoint.from_json(load_object(path.read_bytes(), "consistency point"))
            walnames.lsn_to_int(point.lsn)  # an LSN that does not parse: unreadable
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}: {exc}")
            continue
        points.append(point)
    return points, problems
