"""The durable prefix: a status walked from a checkpoint equals one walked over every row."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from logship.catalog.store import Catalog, NewFile
from logship.config.load import load_config
from logship.engines.postgresql.engine import ENGINE
from logship.engines.postgresql.lag import QueueFacts, queue_facts
from logship.engines.postgresql.status import connector_status
from logship.engines.postgresql.walnames import segment_name
from logship.status.figures import DurablePrefix
from logship.status.monitor import collect_statuses

SEG = 16 * 1024 * 1024
NOW = 1_700_000_000.0


@dataclass(frozen=True)
class Row:
    name: str
    state: str
    closed_at: float
    size: int = SEG

    @property
    def order_key(self) -> str:
        return ENGINE.ship_order(self.name)


@st.composite
def histories(draw: st.DrawFn) -> list[Row]:
    """Rows in ship order: segments with holes, timeline switches with or without
    their history file, states in any mix, the odd backup label."""
    rows: list[Row] = []
    timeline, number = 1, draw(st.integers(1, 5))
    for _ in range(draw(st.integers(0, 40))):
        step = draw(st.sampled_from(["next", "next", "next", "hole", "switch", "label"]))
        if step == "switch":
            timeline += 1
            if draw(st.booleans()):
                rows.append(Row(f"{timeline:08X}.history", draw(states()), NOW - 50, 42))
            # The new timeline repeats the segment it branched in, or follows it.
            number = max(0, number - draw(st.integers(0, 1)))
        elif step == "hole":
            number += draw(st.integers(2, 3))
        elif step == "label" and rows:
            name = f"{segment_name(timeline, number, SEG)}.00000028.backup"
            rows.append(Row(name, draw(states()), NOW - 40, 300))
            continue
        else:
            number += 1
        closed = NOW - draw(st.floats(0, 100))
        rows.append(Row(segment_name(timeline, number, SEG), draw(states()), closed))
    return sorted(rows, key=lambda row: row.order_key)


def states() -> st.SearchStrategy[str]:
    return st.sampled_from(["discovered", "shipped", "shipped", "applied", "conflict"])


def _status(queue: QueueFacts) -> dict[str, object]:
    return connector_status(
        name="db", kind="postgresql", site="dr", rpo_target_s=60, now=NOW, queue=queue
    ).to_json()


def _advanced(rows: list[Row], draw: st.DataObject) -> list[Row]:
    """The same rows later: some pending ones shipped, some shipped ones applied."""
    moved = []
    for row in rows:
        if row.state == "discovered" and draw.draw(st.booleans()):
            row = replace(row, state="shipped")
        elif row.state == "shipped" and draw.draw(st.booleans()):
            row = replace(row, state="applied")
        moved.append(row)
    return moved


@settings(max_examples=300, deadline=None)
@given(rows=histories(), data=st.data())
def test_walk_from_the_prefix_equals_the_full_walk(rows: list[Row], data: st.DataObject) -> None:
    # A walk at some earlier moment, over the rows known then, leaves a prefix...
    known = data.draw(st.integers(0, len(rows)))
    prefix = queue_facts(rows[:known]).prefix
    # ...then states move forward; a status from the prefix must still tell the truth.
    later = _advanced(rows, data)
    full = queue_facts(later)
    if prefix is None:
        return
    after = [row for row in later if row.order_key > prefix.order_key]
    applied = [r.name for r in later if r.order_key <= prefix.order_key and r.state == "applied"]
    resumed = queue_facts(after, prefix, applied[-1] if applied else None)
    assert _status(resumed) == _status(full)
    # And the prefix found from there is the one a full walk finds.
    assert resumed.prefix == full.prefix


def test_prefix_stops_at_the_first_hole_or_pending_file() -> None:
    seg = [segment_name(1, n, SEG) for n in range(1, 8)]
    rows = [Row(seg[0], "shipped", NOW - 9), Row(seg[1], "applied", NOW - 8)]
    rows += [Row(seg[3], "shipped", NOW - 6), Row(seg[4], "shipped", NOW - 5)]
    prefix = queue_facts(rows).prefix
    assert prefix is not None and (prefix.name, prefix.closed_at) == (seg[1], NOW - 8)
    rows = [Row(seg[0], "shipped", NOW - 9), Row(seg[1], "discovered", NOW - 8)]
    assert queue_facts(rows).prefix == DurablePrefix(
        seg[0], ENGINE.ship_order(seg[0]), NOW - 9, SEG
    )


# -- in a real catalog, through the daemon's monitor and `status` -------------------


def _config(tmp_path: Path) -> Path:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "logship.toml").write_text(
        f"""[logship]
state_dir = "{tmp_path / "state"}"

[sites.dr]
host = "127.0.0.1"
user = "postgres"
identity_file = "/nonexistent/key"
known_hosts = "/nonexistent/known_hosts"
root = "/srv/dr"
"""
    )
    (tmp_path / "connectors" / "db.toml").write_text(
        """kind = "postgresql"
site = "dr"
rpo = "60s"

[primary]
dsn = "host=/nonexistent dbname=postgres"

[standby]
dsn = "host=/nonexistent dbname=postgres"
data_dir = "/nonexistent"
"""
    )
    (tmp_path / "state").mkdir(mode=0o700)
    return tmp_path / "logship.toml"


def _seg(number: int, timeline: int = 1) -> str:
    return segment_name(timeline, number, SEG)


def _add(catalog: Catalog, names: list[str], now: float) -> None:
    catalog.add_discovered_many(
        [NewFile("db", n, ENGINE.ship_order(n), SEG, now - 5) for n in names], now
    )


def _ship(catalog: Catalog, names: list[str], now: float) -> None:
    for name in names:
        row = catalog.file("db", name)
        assert row is not None
        catalog.mark_shipped(row.id, "0" * 64, SEG // 4, now)


class FullWalks(Catalog):
    """The same catalog as if no prefix had ever been kept: every walk reads every row."""

    def walk_checkpoint(self, connector: str) -> DurablePrefix | None:
        return None

    def save_walk_checkpoint(self, connector: str, prefix: DurablePrefix) -> bool:
        return False


class Views:
    """`status` as the daemon's monitor, a read-only `status` and a full walk see it."""

    def __init__(self, tmp_path: Path) -> None:
        self.config = load_config(_config(tmp_path))
        self.catalog = Catalog(self.config.catalog_url)
        self.full_walks = FullWalks(self.config.catalog_url)

    def monitor(self, now: float) -> dict[str, object]:
        return collect_statuses(self.config, self.catalog, ["db"], now, remember=True)[0].to_json()

    def status(self, now: float) -> dict[str, object]:
        return collect_statuses(self.config, self.catalog, ["db"], now)[0].to_json()

    def full(self, now: float) -> dict[str, object]:
        return collect_statuses(self.config, self.full_walks, ["db"], now)[0].to_json()

    def agree(self, now: float) -> dict[str, object]:
        full = self.full(now)
        assert self.status(now) == full
        assert self.monitor(now) == full
        return full


def test_monitor_keeps_the_prefix_and_status_reads_only_the_rows_after_it(
    tmp_path: Path,
) -> None:
    views = Views(tmp_path)
    now = time.time()
    names = [_seg(n) for n in range(1, 2001)]
    _add(views.catalog, names, now)
    _ship(views.catalog, names[:1500], now)
    assert views.catalog.walk_checkpoint("db") is None
    first = views.agree(now)
    assert (first["pending_files"], first["last_shipped"]) == (500, names[1499])
    checkpoint = views.catalog.walk_checkpoint("db")
    assert checkpoint is not None and checkpoint.name == names[1499]
    # What a later walk reads: only the rows past the prefix.
    assert len(views.catalog.files("db", after=checkpoint.order_key)) == 500

    _ship(views.catalog, names[1500:], now + 1)
    views.catalog.record_restored("db", names[1800], now + 1, now + 1)
    shipped = views.agree(now + 2)
    assert (shipped["pending_files"], shipped["last_applied"]) == (0, names[1800])
    checkpoint = views.catalog.walk_checkpoint("db")
    assert checkpoint is not None and checkpoint.name == names[-1]
    # Nothing after the prefix: the figures come from the prefix itself.
    assert views.catalog.files("db", after=checkpoint.order_key) == []
    assert views.agree(now + 3)["rpo_exposure_s"] == round(now + 3 - (now - 5), 3)


def test_a_file_turning_up_before_the_prefix_drops_it(tmp_path: Path) -> None:
    views = Views(tmp_path)
    now = time.time()
    names = [_seg(n) for n in range(5, 50)]
    _add(views.catalog, names, now)
    _ship(views.catalog, names, now)
    views.agree(now)
    assert views.catalog.walk_checkpoint("db") is not None
    # An older segment pushed by hand long after: the walk must see it again.
    _add(views.catalog, [_seg(3)], now + 1)
    assert views.catalog.walk_checkpoint("db") is None
    late = views.agree(now + 2)
    assert late["pending_files"] == 1 and late["gap"] is not None
    # A file after the prefix leaves it alone.
    _ship(views.catalog, [_seg(3)], now + 3)
    _add(views.catalog, [_seg(4)], now + 3)
    _ship(views.catalog, [_seg(4)], now + 3)
    views.agree(now + 4)
    checkpoint = views.catalog.walk_checkpoint("db")
    assert checkpoint is not None and checkpoint.name == names[-1]
    _add(views.catalog, [_seg(50)], now + 5)
    assert views.catalog.walk_checkpoint("db") == checkpoint


def test_a_prefix_is_not_saved_past_a_file_that_arrived_during_the_walk(tmp_path: Path) -> None:
    views = Views(tmp_path)
    now = time.time()
    names = [_seg(n) for n in range(1, 10)]
    _add(views.catalog, names[:3] + names[4:], now)
    _ship(views.catalog, names[:3] + names[4:], now)
    stale = queue_facts(views.catalog.files("db"))  # a walk that saw the hole...
    _add(views.catalog, [names[3]], now + 1)  # ...which a late file fills meanwhile
    _ship(views.catalog, [names[3]], now + 1)
    fresh = queue_facts(views.catalog.files("db")).prefix
    assert fresh is not None and fresh.name == names[-1]
    assert stale.prefix is not None and stale.prefix.name == names[2]
    # Pending rows before a candidate refuse it; durable ones cannot make it wrong.
    _add(views.catalog, [_seg(20)], now + 2)
    ahead = DurablePrefix(_seg(21), ENGINE.ship_order(_seg(21)), now, SEG)
    assert views.catalog.save_walk_checkpoint("db", ahead) is False
    assert views.catalog.save_walk_checkpoint("db", fresh) is True
    assert views.catalog.walk_checkpoint("db") == fresh


def test_retention_of_the_prefix_row_drops_it(tmp_path: Path) -> None:
    views = Views(tmp_path)
    now = time.time()
    names = [_seg(n) for n in range(1, 30)]
    _add(views.catalog, names, now)
    _ship(views.catalog, names, now)
    views.agree(now)
    views.catalog.forget_files("db", names[:10])  # older than the prefix: kept
    assert views.catalog.walk_checkpoint("db") is not None
    views.agree(now + 1)
    views.catalog.forget_files("db", names[10:])  # the prefix row itself: dropped
    assert views.catalog.walk_checkpoint("db") is None
    gone = views.agree(now + 2)
    assert (gone["last_shipped"], gone["rpo_exposure_s"]) == (None, None)


def test_a_catalog_from_before_the_prefix_gains_its_table_and_index(tmp_path: Path) -> None:
    views = Views(tmp_path)
    names = [_seg(n) for n in range(1, 5)]
    _add(views.catalog, names, time.time())
    views.catalog.close()
    views.full_walks.close()
    database = tmp_path / "state" / "catalog.db"
    with sqlite3.connect(database) as db:  # as an older logship left it
        db.execute("DROP TABLE walk_checkpoints")
        db.execute("DROP INDEX ix_spool_files_order")
    reopened = Catalog(views.config.catalog_url)
    try:
        assert [row.name for row in reopened.files("db")] == names
        assert reopened.walk_checkpoint("db") is None
    finally:
        reopened.close()
    with sqlite3.connect(database) as db:
        indexes = {row[1] for row in db.execute("PRAGMA index_list(spool_files)")}
        plan = " ".join(
            str(row[-1])
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM spool_files WHERE connector = 'db'"
                " AND order_key > 'x' ORDER BY order_key"
            )
        )
    assert "ix_spool_files_order" in indexes
    assert "ix_spool_files_order" in plan
