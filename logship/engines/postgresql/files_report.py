"""At promote: which file state goes with the database being promoted.

Read at the standby site only: each files connector's completed consistency
points and its generations log (see logship.consistency). The newest point
whose LSN the standby has replayed names the file generation that goes with
the promoted database; the log says what changed at the site after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logship.consistency import SitePoint, read_site_points
from logship.engines.files.generations import ChangedSince, changed_since, read_generations
from logship.engines.files.names import show_path
from logship.manifest import SiteLayout

#: paths named in the printed report; the JSON record keeps the same list
SHOW_PATHS = 20


@dataclass(frozen=True)
class FilesReport:
    files: str
    point: SitePoint | None
    changed: ChangedSince
    problems: tuple[str, ...]

    def line(self) -> str:
        site_at = self.changed.site_generation
        where = "no generations log" if site_at is None else f"the site holds generation {site_at}"
        if self.point is None:
            text = (
                "no consistency point at or before the replayed LSN: which file state "
                f"goes with the database is unknown; {where}"
            )
        else:
            point = self.point
            text = (
                f"goes with generation {point.generation} (point {point.point_id}, "
                f"{point.reason}, LSN {point.lsn}); "
            )
            changed = self.changed
            if changed.rounds == 0:
                text += f"{where}: the files at the site are that state"
            else:
                count = (
                    str(len(changed.paths))
                    if changed.complete
                    else "more than " + str(len(changed.paths))
                )
                shown = ", ".join(show_path(path) for path in changed.paths[:SHOW_PATHS])
                more = " …" if len(changed.paths) > SHOW_PATHS else ""
                text += (
                    f"{where}: {count} path(s) changed after it, newer than the database: "
                    f"{shown}{more}"
                )
        if self.problems:
            text += f" ({len(self.problems)} unreadable point file(s): {self.problems[0]})"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "connector": self.files,
            "point": None if self.point is None else self.point.point_id,
            "point_lsn": None if self.point is None else self.point.lsn,
            "generation": None if self.point is None else self.point.generation,
            "site_generation": self.changed.site_generation,
            "changed_after": (
                None if self.point is None else [show_path(path) for path in self.changed.paths]
            ),
        }


def files_report(
    site_root: Path, files: str, database: str, timeline: int, replayed_lsn: int
) -> FilesReport:
    """The report for one files connector, given where the standby's replay stands."""
    points, problems = read_site_points(site_root, files)
    # A point of another timeline's history past its fork does not go with this
    # database: only points of timelines up to the standby's own count.
    matching = [
        p
        for p in points
        if p.database == database
        and (p.timeline is None or p.timeline <= timeline)
        and p.lsn_value <= replayed_lsn
    ]
    point = max(matching, key=lambda p: (p.lsn_value, p.complete_at), default=None)
    log = read_generations(
        Path(SiteLayout.for_connector(site_root.as_posix(), files).generations_log)
    )
    changed = changed_since(log, point.generation if point else 0)
    return FilesReport(files, point, changed, tuple(problems))
