"""Lag and RPO rules (docs/reference/status-json.md) on plain rows: gaps, timelines,
pending, states."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from status_contract import CONTRACT_FIELDS

from logship.engines.postgresql import site_sampling, walnames
from logship.engines.postgresql.engine import ENGINE
from logship.engines.postgresql.lag import find_gap, segment_size
from logship.engines.postgresql.status import connector_status
from logship.engines.postgresql.walnames import segment_name
from logship.status.figures import rto_estimate_s
from logship.status.jobs import JobFacts
from logship.status.model import ConnectorStatus, Gap
from logship.status.state import State

MIB = 1024 * 1024
SEG = 16 * MIB
NOW = 1_700_000_000.0
RPO = 60.0


@dataclass(frozen=True)
class Row:
    name: str
    state: str = "shipped"
    closed_at: float = NOW - 10
    size: int = SEG

    @property
    def order_key(self) -> str:
        return ENGINE.ship_order(self.name)


@dataclass(frozen=True)
class Site:
    reachable: bool
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    last_restored: str | None
    heartbeat_at: float | None = None
    replay_timestamp: float | None = None
    sampled_at: float = NOW
    replay_lsn: str | None = None
    replay_rate_bps: float | None = None
    error: str | None = None


def seg(number: int, timeline: int = 1, seg_size: int = SEG) -> str:
    return segment_name(timeline, number, seg_size)


def status(rows: list[Row] | None, **kwargs: object) -> ConnectorStatus:
    return connector_status(
        name="orders",
        kind="postgresql",
        site="dr",
        rpo_target_s=RPO,
        now=NOW,
        files=rows,
        **kwargs,  # type: ignore[arg-type]
    )


def test_segment_name_round_trips_through_walnames() -> None:
    assert seg(1) == "000000010000000000000001"
    assert seg(0x100) == "000000010000000100000000"  # 256 segments of 16 MiB per log id
    for size in (MIB, SEG, 64 * MIB, 1024 * MIB):
        for number in (0, 1, 255, 256, 4097):
            parsed = walnames.parse(segment_name(3, number, size))
            assert parsed is not None and parsed.segment_number(size) == number


def test_empty_catalog() -> None:
    st = status([])
    assert st.state is State.OK
    assert st.rpo_exposure_s is None
    assert st.transport_lag_s == 0.0
    assert (st.pending_files, st.pending_bytes) == (0, 0)
    assert st.last_shipped is None and st.last_applied is None
    assert st.apply_lag_s is None
    assert st.gap is None


def test_no_catalog_means_unknown_not_zero() -> None:
    st = status(None)
    assert st.state is State.OK
    assert st.rpo_exposure_s is None
    assert st.transport_lag_s is None
    assert st.pending_files is None and st.pending_bytes is None


def test_all_shipped_contiguous() -> None:
    rows = [Row(seg(n), closed_at=NOW - 40 + n) for n in range(1, 6)]
    st = status(rows)
    assert st.rpo_exposure_s == pytest.approx(35.0)
    assert st.transport_lag_s == 0.0
    assert st.last_shipped == seg(5)
    assert st.gap is None
    assert st.state is State.WARN  # 35 s is above half of 60 s


def test_pending_tail() -> None:
    rows = [
        Row(seg(1), closed_at=NOW - 20),
        Row(seg(2), closed_at=NOW - 15),
        Row(seg(3), "discovered", closed_at=NOW - 12),
        Row(seg(4), "discovered", closed_at=NOW - 5),
    ]
    st = status(rows)
    assert st.rpo_exposure_s == pytest.approx(15.0)
    assert st.transport_lag_s == pytest.approx(12.0)
    assert (st.pending_files, st.pending_bytes) == (2, 2 * SEG)
    assert st.last_shipped == seg(2)
    assert st.state is State.OK


def test_out_of_order_shipping_counts_only_the_contiguous_prefix() -> None:
    rows = [
        Row(seg(1), closed_at=NOW - 20),
        Row(seg(2), "discovered", closed_at=NOW - 15),
        Row(seg(3), closed_at=NOW - 10),
    ]
    st = status(rows)
    assert st.rpo_exposure_s == pytest.approx(20.0)
    assert st.last_shipped == seg(3)
    assert st.gap is None


def test_gap_is_reported_and_stops_the_exposure() -> None:
    rows = [
        Row(seg(1), closed_at=NOW - 25),
        Row(seg(2), closed_at=NOW - 20),
        Row(seg(4), closed_at=NOW - 10),
        Row(seg(5), closed_at=NOW - 5),
    ]
    st = status(rows)
    assert st.gap == Gap(missing=seg(3), segment_number=3, after=seg(2))
    assert st.rpo_exposure_s == pytest.approx(20.0)
    # 20 s alone would be ok: a gap never looks healthy.
    assert st.state is State.WARN
    assert st.to_json()["gap"] == {"missing": seg(3), "segment_number": 3, "after": seg(2)}


def test_gap_among_pending_files_is_still_reported() -> None:
    rows = [Row(seg(1)), Row(seg(2), "discovered"), Row(seg(7), "discovered")]
    assert find_gap(rows) == Gap(missing=seg(3), segment_number=3, after=seg(2))


def test_log_id_boundary_is_not_a_gap() -> None:
    rows = [Row(seg(0xFE)), Row(seg(0xFF)), Row(seg(0x100)), Row(seg(0x101))]
    assert [r.name[8:] for r in rows][1:3] == ["00000000000000FF", "0000000100000000"]
    assert find_gap(rows) is None
    assert status(rows).last_shipped == seg(0x101)


def test_segment_size_is_read_from_the_rows() -> None:
    big = 64 * MIB  # 64 segments per log id: ...0000003F is followed by ...0000000100000000
    rows = [Row(seg(n, seg_size=big), size=big) for n in (62, 63, 64, 65)]
    assert rows[2].name == "000000010000000100000000"
    assert segment_size(rows) == big
    assert find_gap(rows) is None
    # Read with the 16 MiB default the same names would look like a gap.
    as_16mib = [Row(r.name) for r in rows]
    assert find_gap(as_16mib) is not None


def test_history_and_backup_files_are_not_segments() -> None:
    rows = [
        Row(seg(1), closed_at=NOW - 30),
        Row("000000010000000000000001.00000028.backup", closed_at=NOW - 29, size=300),
        Row(seg(2), closed_at=NOW - 20),
    ]
    assert find_gap(rows) is None
    assert status(rows).rpo_exposure_s == pytest.approx(20.0)


@pytest.mark.parametrize("first_on_new_timeline", [5, 6])
def test_timeline_switch_continues_numbering(first_on_new_timeline: int) -> None:
    rows = [
        Row(seg(4), closed_at=NOW - 40),
        Row(seg(5), closed_at=NOW - 35),
        Row("00000002.history", closed_at=NOW - 34, size=42),
        Row(seg(first_on_new_timeline, timeline=2), closed_at=NOW - 30),
        Row(seg(first_on_new_timeline + 1, timeline=2), closed_at=NOW - 20),
    ]
    st = status(rows)
    assert st.gap is None
    assert st.rpo_exposure_s == pytest.approx(20.0)
    assert st.last_shipped == seg(first_on_new_timeline + 1, timeline=2)


def test_timeline_switch_that_skips_a_segment_is_a_gap() -> None:
    rows = [
        Row(seg(5), closed_at=NOW - 35),
        Row("00000002.history", size=42),
        Row(seg(7, timeline=2), closed_at=NOW - 20),
    ]
    st = status(rows)
    assert st.gap == Gap(missing=seg(6), segment_number=6, after=seg(5))
    assert st.rpo_exposure_s == pytest.approx(35.0)


def test_unshipped_history_file_holds_back_the_new_timeline() -> None:
    rows = [
        Row(seg(5), closed_at=NOW - 35),
        Row("00000002.history", "discovered", closed_at=NOW - 34, size=42),
        Row(seg(5, timeline=2), closed_at=NOW - 20),
    ]
    st = status(rows)
    assert st.rpo_exposure_s == pytest.approx(35.0)
    assert (st.pending_files, st.pending_bytes) == (1, 42)
    assert st.transport_lag_s == pytest.approx(34.0)


def test_conflict_is_never_durable() -> None:
    rows = [
        Row(seg(1), closed_at=NOW - 50),
        Row(seg(2), "conflict", closed_at=NOW - 40),
        Row(seg(3), closed_at=NOW - 5),
    ]
    st = status(rows)
    assert st.rpo_exposure_s == pytest.approx(50.0)
    assert st.pending_files == 1
    assert st.state is State.WARN


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (10.0, State.OK),
        (30.0, State.OK),
        (31.0, State.WARN),
        (60.0, State.WARN),
        (61.0, State.BREACH),
    ],
)
def test_thresholds(age: float, expected: State) -> None:
    assert status([Row(seg(1), closed_at=NOW - age)]).state is expected


@pytest.mark.parametrize(
    ("age", "expected"), [(5.0, State.OK), (45.0, State.WARN), (120.0, State.BREACH)]
)
def test_nothing_shipped_yet_judged_by_the_oldest_pending_file(age: float, expected: State) -> None:
    rows = [
        Row(seg(1), "discovered", closed_at=NOW - age),
        Row(seg(2), "discovered", closed_at=NOW - age / 2),
    ]
    st = status(rows)
    assert st.rpo_exposure_s is None
    assert st.transport_lag_s == pytest.approx(age)
    assert st.state is expected


def test_unreachable_site_is_down_whatever_the_numbers() -> None:
    st = status([Row(seg(1), closed_at=NOW - 1)], site_status=Site(False, "connection refused"))
    assert st.state is State.DOWN
    assert st.site_error == "connection refused"
    assert status([], site_status=Site(False, "timeout")).state is State.DOWN
    assert status([], site_status=Site(True)).state is State.OK


def test_last_applied() -> None:
    rows = [Row(seg(1), "applied"), Row(seg(2), "applied"), Row(seg(3))]
    assert status(rows).last_applied == seg(2)
    assert status(rows, progress=Progress(seg(3))).last_applied == seg(3)
    assert status(rows, progress=Progress(None)).last_applied == seg(2)


def test_replay_rate_counts_only_samples_where_replay_moved() -> None:
    first = site_sampling.replay_rate(None, None, None, "0/1000000", 100.0)
    assert first is None
    rate = site_sampling.replay_rate("0/1000000", 100.0, None, "0/2000000", 102.0)
    assert rate == 0x1000000 / 2
    assert site_sampling.replay_rate("0/2000000", 102.0, rate, "0/2000000", 110.0) == rate  # idle
    smoothed = site_sampling.replay_rate("0/2000000", 110.0, rate, "1/0", 111.0)
    assert rate < smoothed


def test_rto_from_backlog_and_rate() -> None:
    assert rto_estimate_s(None, 10.0) is None
    assert rto_estimate_s(0, None) == 0.0
    assert rto_estimate_s(100, None) is None
    assert rto_estimate_s(100, 50.0) == 2.0


def test_apply_lag_from_the_heartbeat_else_the_last_replayed_commit() -> None:
    rows = [Row(seg(1))]
    assert status(rows).apply_lag_s is None
    assert status(rows, progress=Progress(None)).apply_lag_s is None
    beat = Progress(seg(1), heartbeat_at=NOW - 2.5, replay_timestamp=NOW - 3600)
    assert status(rows, progress=beat).apply_lag_s == 2.5
    no_beat = Progress(seg(1), replay_timestamp=NOW - 30)
    assert status(rows, progress=no_beat).apply_lag_s == 30.0
    assert status([Row(seg(1))]).last_applied is None


def test_json_has_exactly_the_contract_fields_and_extras() -> None:
    st = status([Row(seg(1))], last_base_backup_at=1_700_000_000.5)
    data = st.to_json()
    assert list(data) == [
        *CONTRACT_FIELDS,
        "gap",
        "role",
        "direction",
        "site_error",
        "archive_ready_files",
        "archive_failed_count",
        "archive_last_failed_at",
        "primary_measured_at",
        "replay_rate_bps",
        "replay_backlog_bytes",
        "rto_estimate_s",
        "standby_measured_at",
        "standby_error",
        "streaming",
        "stream_flush_lsn",
        "sync_mode",
        "slot_retained_bytes",
        "stream_measured_at",
        "stream_error",
        "next_job",
        "next_job_at",
        "last_job",
        "last_job_at",
        "last_job_error",
        "drill_state",
        "drill_at",
        "drill_error",
        "rebuild_rto_s",
        "drift_files",
        "verified_at",
        "verify_error",
        "sync_generation",
        "consistency_point",
        "consistency_at",
        "consistency_open",
    ]
    assert data["last_base_backup_at"] == "2023-11-14T22:13:20Z"
    assert data["state"] == "ok" and type(data["state"]) is str
    assert isinstance(data["rpo_target_s"], float)


@dataclass
class DrillRowFake:
    state: str
    finished_at: float | None
    error: str | None = None
    restore_s: float | None = None
    replay_s: float | None = None


def test_job_facts_show_the_last_run_and_the_measured_rebuild() -> None:
    passed = DrillRowFake("passed", NOW - 600, restore_s=12.25, replay_s=30.5)
    failed = DrillRowFake("failed", NOW - 60, error="checksum mismatch")
    jobs = JobFacts(
        next_job=("base-backup", NOW + 3600),
        last_job=("base-backup", NOW - 60, "drill of X failed: checksum mismatch"),
        last_drill=failed,
        last_passed_drill=passed,
    )
    st = status([Row(seg(1))], jobs=jobs)
    assert (st.next_job, st.last_job, st.drill_state) == ("base-backup", "base-backup", "failed")
    assert st.drill_error == "checksum mismatch"
    # The last drill that passed still measured a rebuild; the failure is shown beside it.
    assert st.rebuild_rto_s == 42.75
    assert status([Row(seg(1))]).rebuild_rto_s is None
    from logship.ui.status_table import status_notes

    notes = status_notes(st).plain
    assert "restore drill failed at" in notes and "checksum mismatch" in notes
    # The job's error is the drill's own, so it is said once.
    assert notes.count("checksum mismatch") == 1


def test_json_round_trip() -> None:
    rows = [Row(seg(1), closed_at=NOW - 50), Row(seg(3), "discovered")]
    st = status(rows, site_status=Site(False, "refused"), last_base_backup_at=NOW)
    assert st.gap is not None
    assert ConnectorStatus.from_json(st.to_json()) == st


def test_every_null_figure_has_a_reason_in_the_human_output() -> None:
    from logship.ui.status_table import null_reasons

    no_catalog = status(None)
    assert any("no catalog yet" in r for r in null_reasons(no_catalog))
    pending_only = status([Row(seg(1), state="discovered")])
    reasons = null_reasons(pending_only)
    assert any("no WAL segment has reached the site" in r for r in reasons)
    assert any("not been sampled" in r for r in reasons)
    measured = status([Row(seg(1))], progress=Progress(seg(1), heartbeat_at=NOW - 1))
    assert null_reasons(measured) == []


@dataclass
class _Primary:
    measured_at: float = 0.0
    current_lsn: str | None = None
    archive_ready: int | None = 3
    archive_failed_count: int | None = 0
    archive_last_failed_at: float | None = None


def test_segments_waiting_for_the_archiver_count_as_pending_without_read_ahead() -> None:
    from logship.engines.postgresql.lag import queue_facts
    from logship.engines.postgresql.status import _with_archiver_backlog

    empty_spool = queue_facts(())
    counted = _with_archiver_backlog(empty_spool, _Primary())
    assert (counted.pending_files, counted.pending_bytes) == (3, 3 * 16 * 1024 * 1024)
    # The exposure is measured from what is durable at the site, not from the queue.
    assert counted.rpo_exposure_s(100.0) == empty_spool.rpo_exposure_s(100.0)
    assert _with_archiver_backlog(empty_spool, _Primary(archive_ready=0)) == empty_spool
    assert _with_archiver_backlog(empty_spool, None) == empty_spool


def test_the_table_shows_a_two_sided_connectors_direction_and_role() -> None:
    from dataclasses import replace

    from factories import connector_status as a_status
    from rich.console import Console

    from logship.status.model import State
    from logship.ui.status_table import build_status_table

    status = replace(
        a_status("orders", State.OK, rpo=60, exposure=1, transport_lag=0, apply_lag=0),
        role="standby",
        direction="dr -> main",
    )
    console = Console(width=160, record=True)
    console.print(build_status_table([status]))
    assert "postgresql dr → main, standby here" in console.export_text()
