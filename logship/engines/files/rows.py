"""Catalog queries for a files connector: one `FilesPath` row per path of its source.

The rows are the state map the target folder converges on: `pending` (changed
here, not yet durable at the site), `shipped` (the site has exactly this),
`deleting` (gone here, still at the site). Each state change is one short
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from logship.catalog.models import FilesPath
from logship.catalog.store import Catalog
from logship.engines.files.names import show_path
from logship.engines.files.scan import EntryKind, TreeEntry

PENDING = "pending"
SHIPPED = "shipped"
DELETING = "deleting"
NOT_DURABLE = (PENDING, DELETING)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FilesPathRow:
    """A `FilesPath` row as read: a plain record, not a live ORM object (a tree of
    many thousand paths is read on every scan and every round)."""

    id: int
    path: bytes
    kind: str
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int | None
    sha256: str | None
    link_target: bytes | None
    state: str
    changed_at: float
    shipped_at: float | None
    attempts: int
    error: str | None
    next_try_at: float | None


_SELECT_ROWS = (
    f"SELECT {', '.join(FilesPathRow.__dataclass_fields__)} FROM {FilesPath.__tablename__} "
    "WHERE connector = ?"
)


def _read_rows(
    catalog: Catalog, connector: str, where: str = "", params: Sequence[object] = ()
) -> list[FilesPathRow]:
    """The connector's rows (those matching `where`, written with ? placeholders),
    read with the driver's own cursor: a round of a first sync reads every row of
    the tree, and SQLAlchemy's result processing per row cost more than the query."""
    statement = f"{_SELECT_ROWS} AND {where}" if where else _SELECT_ROWS
    with catalog.session() as s:
        cursor = s.connection().connection.cursor()
        try:
            cursor.execute(_driver_sql(s, statement), (connector, *params))
            return [FilesPathRow(*row) for row in cursor.fetchall()]
        finally:
            cursor.close()


def entry_of(row: FilesPathRow) -> TreeEntry:
    return TreeEntry(
        row.path,
        EntryKind(row.kind),
        row.mode,
        row.size,
        row.mtime_ns,
        row.link_target,
        row.ctime_ns,
    )


def all_rows(catalog: Catalog, connector: str) -> dict[bytes, FilesPathRow]:
    return {row.path: row for row in _read_rows(catalog, connector)}


def rows_below(catalog: Catalog, connector: str, folder: bytes) -> dict[bytes, FilesPathRow]:
    """The row of `folder` and of every path below it (all rows for the root, b"")."""
    if not folder:
        return all_rows(catalog, connector)
    prefix = folder + b"/"
    # Compared as a byte prefix rather than with LIKE: "%" and "_" are valid name bytes.
    found = _read_rows(
        catalog, connector, "(path = ? OR substr(path, 1, ?) = ?)", (folder, len(prefix), prefix)
    )
    return {row.path: row for row in found}


def rows_for(catalog: Catalog, connector: str, paths: Iterable[bytes]) -> dict[bytes, FilesPathRow]:
    found: dict[bytes, FilesPathRow] = {}
    for chunk in _chunks(list(paths)):
        rows = _read_rows(catalog, connector, f"path IN ({_marks(chunk)})", chunk)
        found.update((row.path, row) for row in rows)
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
            paths = [entry.path for entry in chunk]
            existing = {
                path
                for (path,) in s.connection().exec_driver_sql(
                    _driver_sql(s, f"{_SELECT_PATHS} AND path IN ({_marks(paths)})"),
                    (connector, *paths),
                )
            }
            new = [entry for entry in chunk if entry.path not in existing]
            if new:
                # New paths: all of them in a first scan.
                _executemany(s, _INSERT_NEW, [_new_row(connector, entry, now) for entry in new])
            if existing:
                known = {
                    row.path: row
                    for row in s.scalars(
                        select(FilesPath).where(
                            FilesPath.connector == connector, FilesPath.path.in_(existing)
                        )
                    )
                }
                for entry in chunk:
                    if (row := known.get(entry.path)) is not None:
                        _apply_change(row, entry, now)
        s.commit()
    return len(entries)


_SELECT_PATHS = f"SELECT path FROM {FilesPath.__tablename__} WHERE connector = ?"
_INSERT_NEW = (
    f"INSERT INTO {FilesPath.__tablename__} (connector, path, kind, mode, size, mtime_ns, "
    "ctime_ns, link_target, state, changed_at, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"
)


def _new_row(connector: str, entry: TreeEntry, now: float) -> tuple[object, ...]:
    return (
        connector,
        entry.path,
        str(entry.kind),
        entry.mode,
        entry.size,
        entry.mtime_ns,
        entry.ctime_ns,
        entry.link_target,
        PENDING,
        now,
    )


def _apply_change(row: FilesPath, entry: TreeEntry, now: float) -> None:
    if row.state == SHIPPED:
        row.changed_at = now
    # Already pending or deleting: exposure keeps counting from the first change
    # the site has not seen.
    row.kind = str(entry.kind)
    row.mode = entry.mode
    row.size = entry.size
    row.mtime_ns = entry.mtime_ns
    row.ctime_ns = entry.ctime_ns
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
            where = (FilesPath.connector == connector, FilesPath.path.in_(chunk))
            if propagate:
                s.execute(
                    update(FilesPath)
                    .where(*where, FilesPath.state == SHIPPED)
                    .values(changed_at=now)
                )
                s.execute(
                    update(FilesPath)
                    .where(*where, FilesPath.state != DELETING)
                    .values(state=DELETING, attempts=0, error=None, next_try_at=None)
                )
            else:
                s.execute(delete(FilesPath).where(*where))
        s.commit()


def _chunks(paths: Sequence[T], size: int = 500) -> Iterable[Sequence[T]]:
    for start in range(0, len(paths), size):
        yield paths[start : start + size]


def due(catalog: Catalog, connector: str, now: float) -> list[FilesPathRow]:
    """Rows waiting for the site whose retry time (if any) has come."""
    return _read_rows(
        catalog,
        connector,
        "state IN (?, ?) AND (next_try_at IS NULL OR next_try_at <= ?)",
        (*NOT_DURABLE, now),
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
        _executemany(
            s,
            _MARK_SHIPPED,
            [
                (
                    str(entry.kind),
                    entry.mode,
                    entry.size,
                    entry.mtime_ns,
                    entry.ctime_ns,
                    entry.link_target,
                    sha256,
                    now,
                    row_id,
                )
                for row_id, entry, sha256 in shipped
            ],
        )
        s.commit()


_MARK_SHIPPED = (
    f"UPDATE {FilesPath.__tablename__} SET state = '{SHIPPED}', kind = ?, mode = ?, size = ?, "
    "mtime_ns = ?, ctime_ns = ?, link_target = ?, sha256 = ?, shipped_at = ?, attempts = 0, "
    "error = NULL, next_try_at = NULL WHERE id = ?"
)


def _executemany(s: Session, statement: str, params: list[tuple[object, ...]]) -> None:
    """`statement` (written with ? placeholders) once per row, straight to the driver.

    For the tree's bulk writes (a first scan's inserts, a batch's shipped marks):
    binding each row through SQLAlchemy cost more than reading, hashing and
    uploading the file.
    """
    s.connection().exec_driver_sql(_driver_sql(s, statement), params)


def _marks(values: Sequence[object]) -> str:
    """The placeholders of an IN list of `values`."""
    return ", ".join("?" * len(values))


def _driver_sql(s: Session, statement: str) -> str:
    """`statement`, written with ? placeholders, in the driver's own paramstyle."""
    paramstyle = s.connection().dialect.paramstyle
    if paramstyle in ("format", "pyformat"):  # psycopg
        return statement.replace("%", "%%").replace("?", "%s")
    if paramstyle != "qmark":  # sqlite3 takes it as written
        raise ValueError(f"no positional placeholders for paramstyle {paramstyle!r}")
    return statement


def mark_removed(catalog: Catalog, row_id: int) -> None:
    """The site no longer has the path: nothing is left to track."""
    with catalog.session() as s:
        s.execute(delete(FilesPath).where(FilesPath.id == row_id))
        s.commit()


def mark_failed(catalog: Catalog, row_id: int, error: str, next_try_at: float) -> None:
    with catalog.session() as s:
        s.execute(
            update(FilesPath)
            .where(FilesPath.id == row_id)
            .values(attempts=FilesPath.attempts + 1, error=error, next_try_at=next_try_at)
        )
        s.commit()


def retry_later(catalog: Catalog, row_id: int, next_try_at: float) -> None:
    """Not a failure (the file is still being written): just not yet."""
    with catalog.session() as s:
        s.execute(update(FilesPath).where(FilesPath.id == row_id).values(next_try_at=next_try_at))
        s.commit()


def retry_later_many(catalog: Catalog, row_ids: Sequence[int], next_try_at: float) -> None:
    """`retry_later` for many rows in one transaction."""
    if not row_ids:
        return
    with catalog.session() as s:
        for chunk in _chunks(list(row_ids)):
            s.execute(
                update(FilesPath).where(FilesPath.id.in_(chunk)).values(next_try_at=next_try_at)
            )
        s.commit()


def pending_paths(catalog: Catalog, connector: str) -> set[bytes]:
    """Paths whose change (pending deletions included) is not yet durable at the site."""
    with catalog.session() as s:
        return set(
            s.scalars(
                select(FilesPath.path).where(
                    FilesPath.connector == connector, FilesPath.state.in_(NOT_DURABLE)
                )
            ).all()
        )


@dataclass(frozen=True)
class FilesSummary:
    """What status needs about one files connector's paths."""

    rows: int
    pending_files: int
    pending_bytes: int
    oldest_pending_at: float | None
    failing: int
    first_error: str | None
    last_shipped: bytes | None
    last_shipped_at: float | None


def summary(catalog: Catalog, connector: str) -> FilesSummary:
    with catalog.session() as s:
        mine = FilesPath.connector == connector
        total = s.scalar(select(func.count()).where(mine)) or 0
        pending = s.execute(
            select(
                func.count(),
                # A deletion moves no bytes.
                func.coalesce(
                    func.sum(case((FilesPath.state == PENDING, FilesPath.size), else_=0)), 0
                ),
                func.min(FilesPath.changed_at),
            ).where(mine, FilesPath.state.in_(NOT_DURABLE))
        ).one()
        failing = s.scalar(select(func.count()).where(mine, FilesPath.error.is_not(None))) or 0
        first_error = s.execute(
            select(FilesPath.path, FilesPath.error)
            .where(mine, FilesPath.error.is_not(None))
            .order_by(FilesPath.changed_at)
            .limit(1)
        ).one_or_none()
        last = s.execute(
            select(FilesPath.path, FilesPath.shipped_at)
            .where(mine, FilesPath.shipped_at.is_not(None))
            .order_by(FilesPath.shipped_at.desc(), FilesPath.id.desc())
            .limit(1)
        ).one_or_none()
    error = None
    if first_error is not None:
        error = f"{show_path(first_error[0])}: {first_error[1]}"
    return FilesSummary(
        rows=total,
        pending_files=pending[0],
        pending_bytes=int(pending[1]),
        oldest_pending_at=pending[2],
        failing=failing,
        first_error=error,
        last_shipped=last[0] if last else None,
        last_shipped_at=last[1] if last else None,
    )
