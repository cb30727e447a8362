"""The demo's exposure figures: what the status sampler reads is what `status --json`
prints, the sampler ends with its reader, and the per-load summary says what the
readings said."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from offline_config import write_offline_config
from rich.console import Console

from logship.cli.demo import parse_reading
from logship.demo_sandbox.status_sampler import reading
from logship.ui.demo_view import (
    DemoSnapshot,
    ExposurePhase,
    PlainDemoView,
    ReplayPosition,
    RichDemoView,
    exposure_summary,
    plain_line,
    render_snapshot,
)


def test_a_sampler_reading_holds_the_entries_status_json_prints(tmp_path: Path) -> None:
    config_path = write_offline_config(tmp_path, {"orders": "60s", "billing": "5m"})
    document, catalog = reading(config_path, None)
    assert catalog is None  # no daemon has created it: status lists nulls, like `status`
    done = subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(config_path), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = json.loads(done.stdout)["connectors"]
    assert [e["name"] for e in document["connectors"]] == [e["name"] for e in printed]
    assert [sorted(e) for e in document["connectors"]] == [sorted(e) for e in printed]
    assert isinstance(document["at"], float)


def test_a_config_that_cannot_be_read_is_an_error_reading_not_an_exit(tmp_path: Path) -> None:
    config_path = write_offline_config(tmp_path, {"orders": "60s"})
    config_path.write_text("[logship\n")  # half rewritten
    document, _ = reading(config_path, None)
    assert "connectors" not in document and document["error"]
    parsed = parse_reading(json.dumps(document).encode())
    assert parsed is not None and parsed.connectors == [] and parsed.error


def test_the_sampler_ends_when_its_reader_goes_away(tmp_path: Path) -> None:
    config_path = write_offline_config(tmp_path, {"orders": "60s"})
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "logship.demo_sandbox.status_sampler"),
            *("--config", str(config_path), "--interval", "0.05"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        for _ in range(2):
            line = parse_reading(proc.stdout.readline())
            assert line is not None and [e["name"] for e in line.connectors] == ["orders"]
        proc.stdout.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None and b"Error" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_median_and_max_over_the_readings_with_a_figure() -> None:
    phase = ExposurePhase(
        "streaming",
        exposures=(0.4, None, 0.2, 0.9, 0.3),
        streaming=("streaming", "streaming", "catchup", "streaming", "streaming"),
        sync_modes=("async",) * 5,
        tps=812.4,
    )
    assert phase.readings == 5
    assert phase.p50 == pytest.approx(0.35)
    assert phase.max == 0.9
    assert phase.streaming_state == "streaming (4 of 5)"
    assert phase.sync_mode == "async"


def test_no_reading_is_shown_as_unknown_not_as_zero() -> None:
    phase = ExposurePhase("archive shipping only")
    assert (phase.p50, phase.max, phase.streaming_state) == (None, None, "n/a")
    assert exposure_summary([phase, phase]) is None


def test_plain_lines_one_per_load_then_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    archive = ExposurePhase("archive shipping only", (2.0, 5.0, 3.0), ("off",) * 3, (None,) * 3)
    streamed = ExposurePhase("streaming", (0.3, 0.5), ("streaming",) * 2, ("async",) * 2, 800.0)
    PlainDemoView().exposure([archive, streamed])
    assert capsys.readouterr().out.splitlines() == [
        "exposure archive shipping only: p50=3.00s max=5.00s readings=3 streaming=off "
        "sync_mode=n/a tps=n/a",
        "exposure streaming: p50=0.40s max=0.50s readings=2 streaming=streaming "
        "sync_mode=async tps=800",
        "under the same load, streaming keeps the median exposure at 0.40s, against 3.00s "
        "with archive shipping only",
    ]


def test_a_step_shows_brackets_as_written_not_as_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = Console(force_terminal=True, width=200)
    shown: list[object] = []
    status = console.status

    def spinner(what: Any, **kwargs: Any) -> Any:
        shown.append(what)
        return status(what, **kwargs)

    monkeypatch.setattr(console, "status", spinner)
    with RichDemoView(console).step("turning streaming on: [streaming] in /srv/[dr]"):
        pass
    # The spinner's line, rendered as rich renders it.
    rendered = Console(width=200, record=True)
    rendered.print(shown[0])
    assert "turning streaming on: [streaming] in /srv/[dr]" in rendered.export_text()


def test_the_live_view_shows_the_streaming_state() -> None:
    entry = {"name": "main", "state": "ok", "rpo_exposure_s": 0.3, "streaming": "streaming"}
    entry |= {"sync_mode": "async", "stream_flush_lsn": "0/3000148"}
    snap = DemoSnapshot("load", 1.0, 3.0, [entry], None, 4, ReplayPosition("0/3000148", None))
    assert " streaming=streaming " in plain_line(snap)
    console = Console(width=200, record=True)
    console.print(render_snapshot(snap))
    shown = console.export_text()
    assert "primary WAL at 0/3000148   streamed and flushed at the standby 0/3000148 " in shown
    assert "stream streaming" in shown  # the status table's state cell
