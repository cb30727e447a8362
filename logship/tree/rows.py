"""Catalog queries for file trees: one `TreeFile` row per path of a files connector.

The rows are the state map the mirror converges on: `pending` (changed here,
not yet durable at the site), `shipped` (the site has exactly this), `deleting`
(gone here, still at the site). Each state change is one short transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import bindparam, case, delete, func, insert, or_, select, update

from logship.catalog.models import TreeFile
from logship.catalog.store import Catalog
from logship.tree.names import show_path
from logship.tree.scan import EntryKind, TreeEntry

PENDING = "pending"
SHIPPED = "shipped"
DELETING = "deleting"
NOT_DURABLE = (PENDING, DELETING)
T = TypeVar("T")


def entry_of(row: TreeFile) -> TreeEntry:
    return TreeEntry(
        row.path, EntryKind(row.kind), row.mode, row.size, row.mtime_ns, row.link_target
    )


def all_rows(catalog: Catalog, connector: str) -> dict[bytes, TreeFile]:
    with catalog.session() as s:
        rows = s.scalars(select(TreeFile).where(TreeFile.connector == connector)).all()
        return {row.path: row for row in rows}


def rows_below(catalog: Catalog, connector: str, folder: bytes) -> dict[bytes, TreeFile]:
    """The row of `folder` and of every path below it (all rows for the root, b"")."""
    if not folder:
        return all_rows(catalog, connector)
    prefix = folder + b"/"
    # Compared as a byte prefix rather than with LIKE: "%" and "_" are valid name bytes.
    with catalog.session() as s:
        found = s.scalars(
            select(TreeFile).where(
                TreeFile.connector == connector,
                or_(
                    TreeFile.path == folder,
                    func.substr(TreeFile.path, 1, len(prefix)) == prefix,
                ),
            )
        ).all()
        return {row.path: row for row in found}


def rows_for(catalog: Catalog, connector: str, paths: Iterable[bytes]) -> dict[bytes, TreeFile]:
    found: dict[bytes, TreeFile] = {}
    with catalog.session() as s:
        for chunk in _chunks(list(paths)):
            query = select(TreeFile).where(
                TreeFile.connector == connector, TreeFile.path.in_(chunk)
            )
            found.update((row.path, row) for row in s.scalars(query).all())
    return found


def record_changed(
    catalog: Catalog, connector: str, entries: Iterable[TreeEntry], now: float
) -> int:
    """These entries differ from what the site has: they become (or stay) pending.

    One transaction for all of them: a first scan of a large tree is one commit
    per batch, not one per path.
    """
    entries = list(entries)
    with catalog.session() as s:
        for chunk in _chunks(entries):
            known = {
                row.path: row
                for row in s.scalars(
                    select(TreeFile).where(
                        TreeFile.connector == connector,
                        TreeFile.path.in_([entry.path for entry in chunk]),
                    )
                ).all()
            }
            new = [entry for entry in chunk if entry.path not in known]
            if new:
                # New paths (all of them in a first scan) in one executemany:
                # ORM objects cost more than the rest of the scan.
                s.execute(insert(TreeFile), [_new_row(connector, entry, now) for entry in new])
            for entry in chunk:
                if (row := known.get(entry.path)) is not None:
                    _apply_change(row, entry, now)
        s.commit()
    return len(entries)


def _new_row(connector: str, entry: TreeEntry, now: float) -> dict[str, object]:
    return {
        "connector": connector,
        "path": entry.path,
        "kind": str(entry.kind),
        "mode": entry.mode,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "link_target": entry.link_target,
        "state": PENDING,
        "changed_at": now,
        "attempts": 0,
    }


def _apply_change(row: TreeFile, entry: TreeEntry, now: float) -> None:
    if row.state == SHIPPED:
        row.changed_at = now
    # Already pending or deleting: exposure keeps counting from the first change
    # the site has not seen.
    row.kind = str(entry.kind)
    row.mode = entry.mode
    row.size = entry.size
    row.mtime_ns = entry.mtime_ns
    row.link_target = entry.link_target
    row.sha256 = None
    row.state = PENDING
    row.attempts = 0
    row.error = None
    row.next_try_at = None


def record_gone(
    catalog: Catalog, connector: str, paths: Iterable[bytes], now: float, *, propagate: bool
) -> None:
    """These paths no longer exist here: remove them at the site, or just forget them."""
    paths = list(paths)
    if not paths:
        return
    with catalog.session() as s:
        for chunk in _chunks(paths):
            where = (TreeFile.connector == connector, TreeFile.path.in_(chunk))
            if propagate:
                s.execute(
                    update(TreeFile).where(*where, TreeFile.state == SHIPPED).values(changed_at=now)
                )
                s.execute(
                    update(TreeFile)
                    .where(*where, TreeFile.state != DELETING)
                    .values(state=DELETING, attempts=0, error=None, next_try_at=None)
                )
            else:
                s.execute(delete(TreeFile).where(*where))
        s.commit()


def _chunks(paths: Sequence[T], size: int = 500) -> Iterable[Sequence[T]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def due(catalog: Catalog, connector: str, now: float) -> list[TreeFile]:
    """Rows waiting for the site whose retry time (if any) has come."""
    with catalog.session() as s:
        return list(
            s.scalars(
                select(TreeFile).where(
                    TreeFile.connector == connector,
                    TreeFile.state.in_(NOT_DURABLE),
                    or_(TreeFile.next_try_at.is_(None), TreeFile.next_try_at <= now),
                )
            ).all()
        )


def mark_shipped(
    catalog: Catalog, row_id: int, entry: TreeEntry, sha256: str | None, now: float
) -> None:
    """The site now durably has `entry` (as it was when shipped)."""
    mark_shipped_many(catalog, [(row_id, entry, sha256)], now)


def mark_shipped_many(
    catalog: Catalog, shipped: Sequence[tuple[int, TreeEntry, str | None]], now: float
) -> None:
    """`mark_shipped` for a whole batch in one transaction: one commit, one fsync."""
    if not shipped:
        return
    with catalog.session() as s:
        # One executemany of a Core statement: per-row ORM updates cost more
        # than the upload of a batch of small files.
        s.connection().execute(
            _MARK_SHIPPED,
            [
                {
                    "row_id": row_id,
                    "new_kind": str(entry.kind),
                    "new_mode": entry.mode,
                    "new_size": entry.size,
                    "new_mtime_ns": entry.mtime_ns,
                    "new_link_target": entry.link_target,
                    "new_sha256": sha256,
                    "shipped": now,
                }
                for row_id, entry, sha256 in shipped
            ],
        )
        s.commit()


_TREE_FILES = TreeFile.__table__
_MARK_SHIPPED = (
    update(_TREE_FILES)
    .where(_TREE_FILES.c.id == bindparam("row_id"))
    .values(
        state=SHIPPED,
        kind=bindparam("new_kind"),
        mode=bindparam("new_mode"),
        size=bindparam("new_size"),
        mtime_ns=bindparam("new_mtime_ns"),
        link_target=bindparam("new_link_target"),
        sha256=bindparam("new_sha256"),
        shipped_at=bindparam("shipped"),
        attempts=0,
        error=None,
        next_try_at=None,
    )
)


def mark_removed(catalog: Catalog, row_id: int) -> None:
    """The site no longer has the path: nothing is left to track."""
    with catalog.session() as s:
        s.execute(delete(TreeFile).where(TreeFile.id == row_id))
        s.commit()


def mark_failed(catalog: Catalog, row_id: int, error: str, next_try_at: float) -> None:
    with catalog.session() as s:
        s.execute(
            update(TreeFile)
            .where(TreeFile.id == row_id)
            .values(attempts=TreeFile.attempts + 1, error=error, next_try_at=next_try_at)
        )
        s.commit()


def retry_later(catalog: Catalog, row_id: int, next_try_at: float) -> None:
    """Not a failure (the file is still being written): just not yet."""
    with catalog.session() as s:
        s.execute(update(TreeFile).where(TreeFile.id == row_id).values(next_try_at=next_try_at))
        s.commit()


def pending_paths(catalog: Catalog, connector: str) -> set[bytes]:
    """Paths whose change (pending deletions included) is not yet durable at the site."""
    with catalog.session() as s:
        return set(
            s.scalars(
                select(TreeFile.path).where(
                    TreeFile.connector == connector, TreeFile.state.in_(NOT_DURABLE)
                )
            ).all()
        )


@dataclass(frozen=True)
class TreeSummary:
    """What status needs about one connector's tree."""

    rows: int
    pending_files: int
    pending_bytes: int
    oldest_pending_at: float | None
    failing: int
    first_error: str | None
    last_shipped: bytes | None
    last_shipped_at: float | None


def summary(catalog: Catalog, connector: str) -> TreeSummary:
    with catalog.session() as s:
        mine = TreeFile.connector == connector
        total = s.scalar(select(func.count()).where(mine)) or 0
        pending = s.execute(
            select(
                func.count(),
                # A deletion moves no bytes.
                func.coalesce(
                    func.sum(case((TreeFile.state == PENDING, TreeFile.size), else_=0)), 0
                ),
                func.min(TreeFile.changed_at),
            ).where(mine, TreeFile.state.in_(NOT_DURABLE))
        ).one()
        failing = s.scalar(select(func.count()).where(mine, TreeFile.error.is_not(None))) or 0
        first_error = s.execute(
            select(TreeFile.path, TreeFile.error)
            .where(mine, TreeFile.error.is_not(None))
            .order_by(TreeFile.changed_at)
            .limit(1)
        ).one_or_none()
        last = s.execute(
            select(TreeFile.path, TreeFile.shipped_at)
            .where(mine, TreeFile.shipped_at.is_not(None))
            .order_by(TreeFile.shipped_at.desc(), TreeFile.id.desc())
            .limit(1)
        ).one_or_none()
    error = None
    if first_error is not None:
        error = f"{show_path(first_error[0])}: {first_error[1]}"
    return TreeSummary(
        rows=total,
        pending_files=pending[0],
        pending_bytes=int(pending[1]),
        oldest_pending_at=pending[2],
        failing=failing,
        first_error=error,
        last_shipped=last[0] if last else None,
        last_shipped_at=last[1] if last else None,
    )
