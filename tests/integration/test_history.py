"""Lag history: downsampling and pruning in a real SQLite catalog, the `--since`
computation, and `status --since` on the CLI, last against a running daemon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cli_run import logship
from factories import connector_status
from offline_config import write_offline_config

from logship.catalog.store import Catalog, NewSample
from logship.config.model import HistorySection
from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.status.history import HistorySink, hold_for, state_changes, summarize
from logship.status.model import ConnectorStatus
from logship.status.monitor import build_sinks
from logship.status.state import State

RPO = 100.0
HOLD = 25.0


def status(name: str, exposure: float | None, state: State | None = None) -> ConnectorStatus:
    if state is None:
        state = State.OK if exposure is None or exposure <= RPO / 2 else State.WARN
        if exposure is not None and exposure > RPO:
            state = State.BREACH
    return connector_status(
        name, state, rpo=RPO, exposure=exposure, transport_lag=0.0, apply_lag=1.0
    )


def sample(at: float, exposure: float | None, state: str = "ok", name: str = "c") -> NewSample:
    return NewSample(name, at, state, exposure, 0.0, 1.0, 0, 0)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield catalog
    catalog.close()


def stored(catalog: Catalog, name: str = "c") -> list[tuple[float, str, float | None]]:
    return [(row.at, row.state, row.rpo_exposure_s) for row in catalog.samples(name, 0)]


def _exercise_store(catalog: Catalog) -> None:
    catalog.add_samples([sample(10, 1.0, name="a"), sample(20, None, "down", "b")])
    catalog.add_samples([sample(30, 150.0, "breach", "a")])
    assert [(r.connector, r.at) for r in catalog.samples(None, 15)] == [("b", 20), ("a", 30)]
    assert [r.rpo_exposure_s for r in catalog.samples("a", 0)] == [1.0, 150.0]
    assert catalog.prune_samples(25) == 2
    assert [r.at for r in catalog.samples(None, 0)] == [30]


def test_sample_store_on_sqlite(catalog: Catalog) -> None:
    _exercise_store(catalog)


def test_sample_store_on_postgresql(reachable_dir: Path, pg_user: OsUser) -> None:
    cluster = PgCluster(reachable_dir / "catalog-db", free_port(), pg_user)
    with cluster:
        catalog = Catalog(f"postgresql+psycopg://{pg_user.name}@127.0.0.1:{cluster.port}/postgres")
        try:
            _exercise_store(catalog)
        finally:
            catalog.close()


# -- HistorySink ---------------------------------------------------------------------------


def test_downsampling_keeps_the_worst_exposure_of_each_window(catalog: Catalog) -> None:
    sink = HistorySink(catalog, HistorySection(keep=86400, resolution=10))
    # Seconds 1000-1029, all "ok"; a short spike at 1013 that a last-value
    # downsampler would lose.
    exposures = {t: 10.0 + (t % 10) * 0.1 for t in range(1000, 1030)}
    exposures[1013] = 45.0
    for t, exposure in exposures.items():
        sink.observe([status("c", exposure)], float(t))
    rows = stored(catalog)
    # The first sample is stored at once (nothing known before it); then one per
    # finished 10 s window. The window 1020-1029 is still open.
    assert rows[0] == (1000.0, "ok", 10.0)
    assert rows[1:] == [(1009.0, "ok", 10.9), (1013.0, "ok", 45.0)]
    sink.close()  # stopping keeps the open window's worst
    assert stored(catalog)[-1] == (1029.0, "ok", 10.9)


def test_a_state_change_is_stored_at_once(catalog: Catalog) -> None:
    sink = HistorySink(catalog, HistorySection(keep=86400, resolution=10))
    sink.observe([status("c", 10.0)], 1000.0)
    sink.observe([status("c", 12.0)], 1001.0)
    sink.observe([status("c", 120.0)], 1002.0)  # breach, mid-window
    rows = stored(catalog)
    # The open window's worst first, then the change, before the window ends.
    assert rows == [(1000.0, "ok", 10.0), (1001.0, "ok", 12.0), (1002.0, "breach", 120.0)]
    sink.observe([status("c", 121.0)], 1003.0)
    sink.observe([status("c", 5.0)], 1004.0)  # recovered: stored at once too
    assert stored(catalog)[-2:] == [(1003.0, "breach", 121.0), (1004.0, "ok", 5.0)]
    # `down` is a state of its own, whatever the exposure says.
    sink.observe([status("c", 5.0, State.DOWN)], 1005.0)
    assert stored(catalog)[-1] == (1005.0, "down", 5.0)


def test_connectors_are_downsampled_separately(catalog: Catalog) -> None:
    sink = HistorySink(catalog, HistorySection(keep=86400, resolution=10))
    for t in range(1000, 1011):
        sink.observe([status("a", float(t - 990)), status("b", 1.0)], float(t))
    assert [row[2] for row in stored(catalog, "a")] == [10.0, 19.0]
    assert [row[2] for row in stored(catalog, "b")] == [1.0, 1.0]


def test_samples_older_than_keep_are_pruned_at_most_once_a_minute(catalog: Catalog) -> None:
    sink = HistorySink(catalog, HistorySection(keep=3600, resolution=10))
    now = 100_000.0
    catalog.add_samples([sample(now - 4000, 1.0), sample(now - 3590, 2.0)])
    sink.observe([status("c", 3.0)], now)
    assert [row[0] for row in stored(catalog)] == [now - 3590, now]
    # Thirty seconds on, the second one is older than `keep` too, but pruning waits.
    sink.observe([status("c", 3.0)], now + 30)
    assert stored(catalog)[0][0] == now - 3590
    sink.observe([status("c", 3.0)], now + 61)
    assert stored(catalog)[0][0] == now


class _RefusesOnce(Catalog):
    """A real catalog whose first write fails, as a locked SQLite file would."""

    refused = False

    def add_samples(self, samples: Sequence[NewSample]) -> None:
        if not self.refused:
            self.refused = True
            raise RuntimeError("database is locked")
        super().add_samples(samples)


def test_samples_a_refused_write_lost_are_written_next_time(tmp_path: Path) -> None:
    catalog = _RefusesOnce(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        sink = HistorySink(catalog, HistorySection(keep=86400, resolution=10))
        with pytest.raises(RuntimeError):
            sink.observe([status("c", 1.0)], 1000.0)
        sink.observe([status("c", 200.0)], 1001.0)
        assert stored(catalog) == [(1000.0, "ok", 1.0), (1001.0, "breach", 200.0)]
    finally:
        catalog.close()


def test_the_daemon_always_has_a_history_sink(tmp_path: Path, catalog: Catalog) -> None:
    from logship.config.model import Config, LogshipSection

    config = Config(
        path=tmp_path / "logship.toml",
        logship=LogshipSection(state_dir=tmp_path),
        sites={},
        connectors={},
        schedules={},
    )
    assert any(isinstance(sink, HistorySink) for sink in build_sinks(config, catalog))


# -- summarize: what `status --since` reports ----------------------------------------------


def test_worst_exposure_and_when() -> None:
    rows = [sample(100, 5.0), sample(110, 40.0), sample(120, 40.0), sample(130, 7.0)]
    summary = summarize(rows, since=105, now=140, rpo_target_s=RPO, hold=HOLD)
    assert (summary.worst_exposure_s, summary.worst_exposure_at) == (40.0, 110)
    assert summary.samples == 3  # the one at 100 only says what held when the window opened
    assert summary.breaches == () and summary.breach_s == 0.0
    assert summary.covered_s == pytest.approx(35.0)


def test_a_breach_runs_from_the_change_into_it_to_the_change_out_of_it() -> None:
    rows = [
        sample(0, 10.0),
        sample(10, 30.0),
        sample(15, 101.0, "breach"),
        sample(20, 130.0, "breach"),
        sample(30, 125.0, "breach"),
        sample(33, 20.0, "ok"),
        sample(40, 10.0),
        sample(60, 150.0, "breach"),
        sample(62, 10.0, "ok"),
    ]
    summary = summarize(rows, since=0, now=70, rpo_target_s=RPO, hold=HOLD)
    assert [(b.start, b.end, b.peak_exposure_s) for b in summary.breaches] == [
        (15, 33, 130.0),
        (60, 62, 150.0),
    ]
    assert summary.breach_s == pytest.approx(18 + 2)
    assert summary.worst_exposure_s == 150.0


def test_an_ongoing_breach_has_no_end_and_lasts_until_now() -> None:
    rows = [sample(0, 10.0), sample(10, 110.0, "breach"), sample(20, 120.0, "breach")]
    summary = summarize(rows, since=0, now=30, rpo_target_s=RPO, hold=HOLD)
    (breach,) = summary.breaches
    assert (breach.start, breach.end, breach.duration_s) == (10, None, 20)
    assert breach.to_json()["end"] is None


def test_the_current_measurement_shows_a_breach_not_stored_yet() -> None:
    rows = [sample(0, 10.0), sample(10, 20.0)]
    current = sample(30, 130.0, "breach")
    summary = summarize(rows, since=0, now=30, rpo_target_s=RPO, hold=HOLD, current=current)
    assert summary.samples == 2
    assert summary.worst_exposure_s == 130.0 and summary.worst_exposure_at == 30
    (breach,) = summary.breaches
    assert (breach.start, breach.end, breach.peak_exposure_s) == (30, None, 130.0)


def test_a_hole_in_the_history_is_not_counted() -> None:
    # Sampling stopped at 10 (daemon down) and came back at 100.
    rows = [sample(0, 110.0, "breach"), sample(10, 120.0, "breach"), sample(100, 5.0, "ok")]
    summary = summarize(rows, since=0, now=110, rpo_target_s=RPO, hold=HOLD)
    (breach,) = summary.breaches
    assert (breach.start, breach.end) == (0, 10 + HOLD)
    assert summary.covered_s == pytest.approx(10 + HOLD + 10)


def test_a_breach_open_when_the_window_starts_is_clipped_to_it() -> None:
    rows = [sample(90, 150.0, "breach"), sample(105, 160.0, "breach"), sample(110, 5.0)]
    summary = summarize(rows, since=100, now=120, rpo_target_s=RPO, hold=HOLD)
    (breach,) = summary.breaches
    assert (breach.start, breach.end, breach.duration_s) == (100, 110, 10)
    assert summary.worst_exposure_s == 160.0  # the sample at 90 is before the window


def test_down_over_the_rpo_is_a_breach_too() -> None:
    rows = [sample(0, 10.0), sample(10, 150.0, "down"), sample(20, 10.0, "ok")]
    summary = summarize(rows, since=0, now=30, rpo_target_s=RPO, hold=HOLD)
    assert [(b.start, b.end) for b in summary.breaches] == [(10, 20)]


def test_nothing_measured_is_null_not_zero() -> None:
    summary = summarize([], since=0, now=60, rpo_target_s=RPO, hold=HOLD)
    document = summary.to_json()
    assert document["worst_exposure_s"] is None and document["breach_s"] is None
    assert document["samples"] == 0 and document["breaches"] == []


def test_hold_covers_two_windows_of_downsampling() -> None:
    # A window's worst may come at its start and the next one's at its end.
    assert hold_for(10.0) > 2 * 10.0


def test_state_changes_are_events_and_a_first_sample_is_a_baseline() -> None:
    rows = [
        sample(0, 10.0, "warn", "a"),
        sample(1, 1.0, "ok", "b"),
        sample(5, 120.0, "breach", "a"),
        sample(6, 1.0, "ok", "b"),
        sample(9, 5.0, "ok", "a"),
    ]
    found = state_changes(rows)
    assert [(e.at, e.connector, e.kind, e.state) for e in found] == [
        (5, "a", "state", "breach"),
        (9, "a", "state", "ok"),
    ]
    assert found[0].message == "warn → breach, exposure 120.0s"


# -- status --since on the CLI -------------------------------------------------------------


def _write_config(root: Path) -> Path:
    return write_offline_config(root, {"orders": "60s"})


def test_status_since_reports_the_breaches_in_the_window(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    catalog = Catalog(f"sqlite:///{tmp_path / 'state' / 'catalog.db'}")
    now = time.time()
    try:
        catalog.add_samples(
            [
                sample(now - 7200, 500.0, "breach", "orders"),  # outside a 1h window
                sample(now - 1800, 10.0, "ok", "orders"),
                sample(now - 1790, 75.0, "breach", "orders"),
                sample(now - 1780, 95.5, "breach", "orders"),
                sample(now - 1770, 12.0, "ok", "orders"),
                sample(now - 1760, 12.0, "ok", "orders"),
            ]
        )
    finally:
        catalog.close()

    result = logship(config, "status", "--since", "1h", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["connectors"]
    assert entry["rpo_target_s"] == 60.0  # the contract fields are untouched
    since = entry["since"]
    assert since["window_s"] == 3600.0 and since["samples"] == 5
    assert since["worst_exposure_s"] == 95.5
    assert since["breach_s"] == pytest.approx(20.0, abs=0.01)
    (breach,) = since["breaches"]
    assert breach["peak_exposure_s"] == 95.5 and breach["end"] is not None

    table = logship(config, "status", "--since", "1h")
    assert table.returncode == 0, table.stderr
    assert "history, last 1h" in table.stdout and "peak 1m35s" in table.stdout

    plain = logship(config, "status", "--json")
    assert "since" not in json.loads(plain.stdout)["connectors"][0]

    bad = logship(config, "status", "--since", "soon")
    assert bad.returncode == 2 and "--since" in bad.stderr and bad.stdout == ""


def test_status_since_before_any_daemon_ran(tmp_path: Path) -> None:
    config = _write_config(tmp_path)
    result = logship(config, "status", "--since", "10m", "--json")
    assert result.returncode == 0, result.stderr
    since = json.loads(result.stdout)["connectors"][0]["since"]
    assert since["samples"] == 0 and since["worst_exposure_s"] is None
    assert since["breach_s"] is None
    assert not (tmp_path / "state" / "catalog.db").exists()


def test_the_running_daemon_stores_history(deployment: Deployment) -> None:
    dep = deployment
    dep.start_daemon()

    def since() -> dict[str, object] | None:
        result = dep.logship("status", "--since", "1m", "--json", check=False)
        if result.returncode != 0:
            return None
        (entry,) = json.loads(result.stdout)["connectors"]
        return entry["since"] if entry["since"]["samples"] else None

    found = wait_for(since, 60, "the daemon's first lag sample")
    assert set(found) >= {
        "from",
        "to",
        "window_s",
        "samples",
        "covered_s",
        "worst_exposure_s",
        "worst_exposure_at",
        "breach_s",
        "breaches",
    }
    assert found["window_s"] == 60.0
    assert found["covered_s"] > 0  # type: ignore[operator]
    assert dep.stop_daemon() == 0
