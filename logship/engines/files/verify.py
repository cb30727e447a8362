"""`verify` for a files connector: the site's tree against the source, path by path.

Compared per path: type, permission bits, size, the sha256 of a file's content and
a link's target. Modification times are not: not every filesystem or copy keeps
them (a restore from tape, `cp` without -p, a filesystem with coarse timestamps),
and the files connector setting them is a courtesy; what a failover needs is the content
and the permissions.

Pure comparison here; `logship.engines.files.verify_run` fetches the two sides and records
the outcome.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from logship.engines.files.digest import DigestEntry
from logship.engines.files.names import show_path as display_path
from logship.engines.files.scan import EntryKind


class Problem(StrEnum):
    MISSING = "missing"  # at the source, not at the site
    EXTRA = "extra"  # at the site, not at the source, and delete = true
    KIND = "kind"
    MODE = "mode"
    SIZE = "size"
    SHA256 = "sha256"
    LINK_TARGET = "link_target"
    UNREADABLE = "unreadable"  # its content could not be read on one side


def path_json(path: bytes) -> dict[str, str]:
    """A path in JSON: readable text and, for exactness, base64 of its bytes."""
    return {"path": display_path(path), "path_b64": base64.b64encode(path).decode("ascii")}


def entry_json(entry: DigestEntry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    link = entry.link_target
    return {
        "kind": str(entry.kind),
        "mode": f"{entry.mode:04o}",
        "size": entry.size,
        "sha256": entry.sha256,
        "link_target": None if link is None else display_path(link),
        "link_target_b64": None if link is None else base64.b64encode(link).decode("ascii"),
        "error": entry.error,
    }


@dataclass(frozen=True)
class Difference:
    """What differs at one path; `source` or `site` is None where the path is absent."""

    path: bytes
    problems: tuple[Problem, ...]
    source: DigestEntry | None
    site: DigestEntry | None

    def describe(self) -> str:
        """One line: what differs, source value first, then the site's."""
        src, dst = self.source, self.site
        parts = []
        for problem in self.problems:
            if problem is Problem.MISSING:
                parts.append("missing at the site")
            elif problem is Problem.EXTRA:
                parts.append("at the site only")
            elif problem is Problem.UNREADABLE:
                side, entry = ("source", src) if src and src.error else ("site", dst)
                parts.append(f"unreadable at the {side}: {entry.error if entry else '?'}")
            elif src is not None and dst is not None:
                parts.append(_change(problem, src, dst))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            **path_json(self.path),
            "problems": [str(problem) for problem in self.problems],
            "source": entry_json(self.source),
            "site": entry_json(self.site),
        }


def _change(problem: Problem, src: DigestEntry, dst: DigestEntry) -> str:
    if problem is Problem.KIND:
        return f"type {src.kind} → {dst.kind}"
    if problem is Problem.MODE:
        return f"mode {src.mode:04o} → {dst.mode:04o}"
    if problem is Problem.SIZE:
        return f"size {src.size} → {dst.size} B"
    if problem is Problem.SHA256:
        return f"content sha256 {(src.sha256 or '?')[:12]}… → {(dst.sha256 or '?')[:12]}…"
    if problem is Problem.LINK_TARGET:
        return (
            f"link → {display_path(src.link_target or b'')} "
            f"→ {display_path(dst.link_target or b'')}"
        )
    return str(problem)


@dataclass
class VerifyReport:
    """The outcome of one comparison; only `differences` are drift."""

    connector: str
    site: str
    target: str
    delete: bool
    #: paths looked at, on either side
    checked: int = 0
    differences: list[Difference] = field(default_factory=list)
    #: paths whose change is still to be shipped: different for now, not drift
    pending: list[bytes] = field(default_factory=list)
    #: paths only at the site with delete = false: the files connector keeps them on purpose
    kept: list[bytes] = field(default_factory=list)
    #: False when the catalog could not say which paths are pending
    pending_known: bool = True

    @property
    def drift(self) -> int:
        return len(self.differences)

    @property
    def clean(self) -> bool:
        return not self.differences

    @property
    def state(self) -> str:
        return "clean" if self.clean else "drift"

    def summary(self) -> str:
        text = (
            f"{self.connector}: {self.checked} paths checked at site {self.site} ({self.target}): "
        )
        text += "no drift" if self.clean else f"{self.drift} differ"
        extras = []
        if self.pending:
            extras.append(f"{len(self.pending)} pending shipment")
        if self.kept:
            extras.append(f"{len(self.kept)} kept at the site (delete = false)")
        if extras:
            text += f" ({', '.join(extras)})"
        if not self.clean:
            shown = ", ".join(display_path(d.path) for d in self.differences[:3])
            more = f" and {self.drift - 3} more" if self.drift > 3 else ""
            text += f": {shown}{more}"
        return text

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        """The report as JSON; `limit` caps each list of paths (the counts stay whole)."""
        return {
            "connector": self.connector,
            "site": self.site,
            "target": self.target,
            "delete": self.delete,
            "state": self.state,
            "checked": self.checked,
            "drift": self.drift,
            "pending": len(self.pending),
            "kept": len(self.kept),
            "pending_known": self.pending_known,
            "differences": [d.to_json() for d in self.differences[:limit]],
            "pending_paths": [path_json(path) for path in self.pending[:limit]],
            "kept_paths": [path_json(path) for path in self.kept[:limit]],
        }


def is_pending(path: bytes, pending: set[bytes]) -> bool:
    """True when `path` or a folder above it has a change still to ship: a renamed or
    removed folder takes everything below it along."""
    if path in pending:
        return True
    parent = path
    while b"/" in parent:
        parent = parent.rpartition(b"/")[0]
        if parent in pending:
            return True
    return False


def _problems(src: DigestEntry, dst: DigestEntry) -> tuple[Problem, ...]:
    if src.kind is not dst.kind:
        return (Problem.KIND,)
    found = []
    # A symlink's own mode is always 0777 on Linux and cannot be set (no lchmod),
    # so it says nothing about the copy at the site.
    if src.kind is not EntryKind.SYMLINK and src.mode != dst.mode:
        found.append(Problem.MODE)
    if src.kind is EntryKind.FILE:
        if src.error or dst.error:
            found.append(Problem.UNREADABLE)
        elif src.size != dst.size:
            found.append(Problem.SIZE)  # the content differs as well, necessarily
        elif src.sha256 != dst.sha256:
            found.append(Problem.SHA256)
    if src.kind is EntryKind.SYMLINK and src.link_target != dst.link_target:
        found.append(Problem.LINK_TARGET)
    return tuple(found)


def compare(
    source: Iterable[DigestEntry],
    site: Iterable[DigestEntry],
    *,
    delete: bool,
    pending: set[bytes] | None,
    connector: str = "",
    site_name: str = "",
    target: str = "",
) -> VerifyReport:
    """Compare the source's entries with the site's; `pending=None`: not known.

    The site's entries are consumed one by one (they may come straight off an SSH
    channel); only the source's are held, by path.
    """
    report = VerifyReport(connector, site_name, target, delete, pending_known=pending is not None)
    waiting = pending or set()
    local = {entry.path: entry for entry in source}
    differences: list[Difference] = []
    pending_paths: list[bytes] = []
    kept: list[bytes] = []
    checked = 0
    for remote in site:
        checked += 1
        mine = local.pop(remote.path, None)
        if mine is None:
            if is_pending(remote.path, waiting):
                pending_paths.append(remote.path)
            elif delete:
                differences.append(Difference(remote.path, (Problem.EXTRA,), None, remote))
            else:
                kept.append(remote.path)
            continue
        problems = _problems(mine, remote)
        if not problems:
            continue
        if is_pending(remote.path, waiting):
            pending_paths.append(remote.path)
        else:
            differences.append(Difference(remote.path, problems, mine, remote))
    for path, mine in local.items():
        checked += 1
        if is_pending(path, waiting):
            pending_paths.append(path)
        elif mine.error:
            differences.append(Difference(path, (Problem.MISSING, Problem.UNREADABLE), mine, None))
        else:
            differences.append(Difference(path, (Problem.MISSING,), mine, None))
    report.checked = checked
    report.differences = sorted(differences, key=lambda d: d.path)
    report.pending = sorted(pending_paths)
    report.kept = sorted(kept)
    return report
