"""The daemon's guard rails and the catalog on both of its backends."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import inspect, text

from logship.catalog.models import FileState
from logship.catalog.store import Catalog, NewFile
from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.files import rows
from logship.engines.files.scan import EntryKind, TreeEntry


def test_second_daemon_on_the_same_state_dir_refuses(deployment: Deployment) -> None:
    first = deployment.start_daemon()
    wait_for(lambda: '"started"' in deployment.daemon_log.read_text(), 30, "first daemon up")
    second = deployment.logship("run", check=False, timeout=60)
    assert second.returncode == 3
    assert "already runs" in second.stderr
    assert first.poll() is None
    assert deployment.stop_daemon() == 0


def _exercise(catalog: Catalog) -> None:
    now = time.time()
    for name in ["000000010000000000000002", "00000002.history", "000000010000000000000001"]:
        tli = name[:8]
        order = f"{tli}.{0 if name.endswith('history') else 1}.{name}"
        assert catalog.add_discovered(NewFile("c", name, order, 16, now), now) is None
    again = catalog.add_discovered(NewFile("c", "000000010000000000000001", "x", 16, now), now)
    assert again is not None and again.state == FileState.DISCOVERED
    pending = [row.name for row in catalog.pending("c")]
    assert pending == ["000000010000000000000001", "000000010000000000000002", "00000002.history"]
    first = catalog.pending("c")[0]
    catalog.mark_shipped(first.id, "ab" * 32, 10, now)
    assert catalog.pending("c")[0].name == "000000010000000000000002"
    catalog.record_restored("c", "000000010000000000000002", now, now)
    assert catalog.file("c", "000000010000000000000001").state == FileState.APPLIED
    catalog.set_link_state("dr", ["c"], False, "boom", now)
    assert catalog.site_status("dr").error == "boom"
    _exercise_tree(catalog)


def _exercise_tree(catalog: Catalog) -> None:
    """A files connector's rows: the statements that go straight to the driver
    (first-scan inserts, shipped marks) in each backend's own placeholders."""
    now = time.time()
    # Any bytes but "/" and NUL; "%" and "?" must not be taken for placeholders.
    odd = b"100% sure?\xff.conf"
    entries = [
        TreeEntry(b"etc", EntryKind.DIR, 0o755, 0, 1),
        TreeEntry(b"etc/" + odd, EntryKind.FILE, 0o640, 12, 2, None, CTIME_NS),
        TreeEntry(b"link", EntryKind.SYMLINK, 0o777, 3, 3, b"etc"),
    ]
    assert rows.record_changed(catalog, "app", entries, now) == 3
    due = {row.path: row for row in rows.due(catalog, "app", now)}
    assert set(due) == {b"etc", b"etc/" + odd, b"link"}
    assert due[b"link"].link_target == b"etc" and due[b"etc/" + odd].mode == 0o640
    assert due[b"etc/" + odd].ctime_ns == CTIME_NS and due[b"etc"].ctime_ns is None
    shipped = [(due[b"etc/" + odd].id, entries[1], "cd" * 32)]
    rows.mark_shipped_many(catalog, shipped, now + 1)
    after = rows.all_rows(catalog, "app")
    assert after[b"etc/" + odd].state == rows.SHIPPED
    assert after[b"etc/" + odd].sha256 == "cd" * 32 and after[b"etc/" + odd].shipped_at == now + 1
    assert after[b"etc/" + odd].ctime_ns == CTIME_NS
    assert {p for p, row in after.items() if row.state == rows.PENDING} == {b"etc", b"link"}
    # A folder and what is below it, by byte prefix; and rows by path.
    assert set(rows.rows_below(catalog, "app", b"etc")) == {b"etc", b"etc/" + odd}
    assert set(rows.rows_below(catalog, "app", b"et")) == set()
    assert set(rows.rows_for(catalog, "app", [b"link", b"etc/" + odd, b"none"])) == {
        b"link",
        b"etc/" + odd,
    }
    assert rows.summary(catalog, "app").pending_files == 2
    # Paths the catalog has are found by the driver-level lookup and updated in place.
    changed = TreeEntry(b"etc/" + odd, EntryKind.FILE, 0o600, 13, 4, None, CTIME_NS + 1)
    assert rows.record_changed(catalog, "app", [changed, entries[0]], now + 2) == 2
    again = rows.all_rows(catalog, "app")
    assert len(again) == 3 and again[b"etc/" + odd].state == rows.PENDING
    assert again[b"etc/" + odd].size == 13 and again[b"etc/" + odd].sha256 is None
    assert again[b"etc/" + odd].ctime_ns == CTIME_NS + 1


#: a ctime in nanoseconds: far beyond 32 bits, the column must be 64-bit
CTIME_NS = 1_795_000_000_123_456_789


def test_catalog_on_sqlite(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        _exercise(catalog)
    finally:
        catalog.close()
    # Durable: a new process (here a new engine) sees the same queue.
    reopened = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    assert reopened.file("c", "000000010000000000000001").state == FileState.APPLIED
    reopened.close()


def test_catalog_on_postgresql(reachable_dir: Path, pg_user: OsUser) -> None:
    cluster = PgCluster(reachable_dir / "catalog-db", free_port(), pg_user)
    with cluster:
        url = f"postgresql+psycopg://{pg_user.name}@127.0.0.1:{cluster.port}/postgres"
        catalog = Catalog(url)
        try:
            _exercise(catalog)
        finally:
            catalog.close()
        # Reopened: the indexes of the other backend stay absent, and that is fine.
        reopened = Catalog(url)
        try:
            with reopened.engine.connect() as conn:
                names = {index["name"] for index in inspect(conn).get_indexes("tree_files")}
            assert {"ix_tree_files_failing_pg", "ix_tree_files_shipped"} <= names
            assert "ix_tree_files_failing" not in names
            assert rows.summary(reopened, "app").failing == 0
            with reopened.engine.begin() as conn:  # as an older logship left it
                conn.execute(text("DROP INDEX ix_tree_files_failing_pg"))
        finally:
            reopened.close()
        again = Catalog(url)
        try:
            with again.engine.connect() as conn:
                definition = conn.execute(
                    text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                    {"name": "ix_tree_files_failing_pg"},
                ).scalar_one()
            assert "(connector, changed_at) WHERE (error IS NOT NULL)" in definition
        finally:
            again.close()


def test_order_keys_sort_history_first() -> None:
    from logship.engines.postgresql.engine import ENGINE

    names = ["000000020000000000000005", "00000002.history", "000000010000000000000004"]
    assert sorted(names, key=ENGINE.ship_order) == [
        "000000010000000000000004",
        "00000002.history",
        "000000020000000000000005",
    ]


def test_a_sqlite_catalog_does_not_load_the_postgresql_dialect() -> None:
    """The daemon and status start without SQLAlchemy's PostgreSQL dialect (about
    25 ms of each start): the partial index that needs it is made by the catalog
    on PostgreSQL only."""
    probe = (
        "import sys, logship.cli.run, logship.cli.status, logship.catalog.store\n"
        "print('sqlalchemy.dialects.postgresql' in sys.modules)"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert found.strip() == "False"
