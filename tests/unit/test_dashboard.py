"""The dashboard: rendered at 80 and 160 columns from a real SQLite catalog, and run
as `logship dashboard` in a real terminal (tmux) that q or Ctrl-C ends cleanly."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from offline_config import write_offline_config
from rich.console import Console

from logship.catalog.store import Catalog, NewFile, NewSample
from logship.cli.dashboard import snapshot
from logship.config.load import load_config
from logship.demo_sandbox.deployment import wait_for
from logship.engines.postgresql.engine import ENGINE
from logship.engines.postgresql.walnames import segment_name
from logship.ui.dashboard_view import NO_DATA, WIDE_MIN, DashboardView, sparkline

SEG = 16 * 1024 * 1024
WAL = [segment_name(1, n, SEG) for n in range(1, 6)]


@dataclass(frozen=True)
class Filled:
    config: Path
    catalog_url: str
    now: float


def _write_config(root: Path) -> Path:
    return write_offline_config(root)


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Filled]:
    """Two connectors: `orders` in breach with a backlog, `billing` quiet."""
    config = _write_config(tmp_path)
    url = f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"
    catalog = Catalog(url)
    now = time.time()
    try:
        for age, name in zip((100, 90, 80, 70, 20), WAL, strict=True):
            catalog.add_discovered(
                NewFile("orders", name, ENGINE.ship_order(name), SEG, now - age), now
            )
        rows = {row.name: row for row in catalog.files("orders")}
        for name in (WAL[0], WAL[1], WAL[3]):  # 3 and 5 still pending
            catalog.mark_shipped(rows[name].id, "0" * 64, SEG, now)
        catalog.set_link_state("dr", ["orders", "billing"], True, None, now)
        catalog.start_backup("orders", "b1", now - 7200)
        catalog.finish_backup("orders", "b1", now=now - 7000, size=1, stored_size=1)
        catalog.record_restored("orders", WAL[0], now - 50, now, heartbeat_at=now - 3.5)
        samples = []
        for i in range(60):  # exposure climbing over the last 10 minutes
            at = now - 600 + i * 10
            exposure = 5 + i * 1.5
            state = "ok" if exposure <= 30 else "warn" if exposure <= 60 else "breach"
            samples.append(NewSample("orders", at, state, exposure, 2.0, 1.0, 1, SEG))
            samples.append(NewSample("billing", at, "ok", 3.0, 0.0, 0.5, 0, 0))
        catalog.add_samples(samples)
    finally:
        catalog.close()
    yield Filled(config, url, now)


def _render(filled: Filled, width: int) -> list[str]:
    config = load_config(filled.config)
    catalog = Catalog(filled.catalog_url)
    try:
        view = snapshot(config, catalog, sorted(config.connectors), filled.now, title="logship")
    finally:
        catalog.close()
    console = Console(
        width=width, record=True, force_terminal=True, color_system="truecolor", file=io.StringIO()
    )
    console.print(view)
    lines = console.export_text().splitlines()
    assert lines, "nothing rendered"
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, f"lines wider than {width}: {too_wide}"
    return lines


def _line_with(lines: list[str], *parts: str) -> str:
    found = [line for line in lines if all(part in line for part in parts)]
    assert found, f"no line with {parts}:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.parametrize("width", [80, 160])
def test_the_figures_appear_and_fit_the_width(filled: Filled, width: int) -> None:
    lines = _render(filled, width)
    text = "\n".join(lines)
    # orders: exposure stops at WAL[1] (closed 90 s ago; WAL[2] is not at the site),
    # transport lag is WAL[2]'s age, apply lag the heartbeat's.
    _line_with(lines, "orders", "breach", "1m20s", "2")  # state, transport lag, files
    _line_with(lines, "postgresql → dr", "1m30s / 1m00s", "3.5s", "32.0 MiB")
    _line_with(lines, "billing", "ok", "0.0s")
    assert "— / 5m00s" in text  # billing: nothing durable yet is unknown, not 0
    assert "1h56m" in text  # age of the base backup finished 7000 s ago
    # WAL positions: in the row when wide, in a table of their own when narrow.
    shipped = _line_with(lines, "orders", WAL[3])
    assert ("1m20s" in shipped) == (width >= WIDE_MIN)
    _line_with(lines, WAL[0])
    # The exposure history climbs into the breach, and the events say when.
    assert "█" in text and "▂" in text
    _line_with(lines, "orders", "ok → warn")
    _line_with(lines, "orders", "warn → breach")


def test_without_a_catalog_the_view_says_why_it_is_empty(tmp_path: Path) -> None:
    config = load_config(_write_config(tmp_path))
    view = snapshot(config, None, sorted(config.connectors), time.time())
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(view)
    text = console.export_text()
    assert "no catalog yet" in text and "orders" in text and "no events" in text
    assert isinstance(view, DashboardView)


def test_sparkline_scales_to_the_rpo_and_shows_holes() -> None:
    points = [(0.0, 0.0), (10.0, 30.0), (20.0, 60.0), (30.0, 90.0), (70.0, 10.0)]
    line = sparkline(points, start=0, end=80, width=8, ceiling=60, hold=15).plain
    assert line[0] == "▁"  # zero exposure still shows there was a sample
    assert line[1] == "▅"  # half the RPO
    assert line[2] == line[3] == "█"  # at and over the RPO: full
    assert line[4] == "█"  # the sample at 30 still stands at 40 (hold)
    assert line[5] == line[6] == NO_DATA  # nothing sampled: a hole, not a flat line
    assert line[7] == "▂"


# -- a real terminal -----------------------------------------------------------------------


class _Tmux:
    """One tmux session on a private server socket; only this session is ever killed."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.session = f"logship-test-{uuid.uuid4().hex[:8]}"

    def command(self, *args: str) -> list[str]:
        return ["tmux", "-S", str(self.socket), *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session).stdout

    def kill(self) -> None:
        self.run("kill-session", "-t", self.session)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("key", ["q", "C-c"])
def test_dashboard_in_a_real_terminal_ends_cleanly(
    filled: Filled, tmp_path: Path, key: str
) -> None:
    exit_file, stty_file = tmp_path / "exit", tmp_path / "stty"
    dashboard = shlex.join(
        [sys.executable, "-m", "logship", "--config", str(filled.config), "dashboard"]
    )
    # After the dashboard, the same shell reports its exit code and the terminal's
    # modes: they must be back to line editing with echo. The trap keeps Ctrl-C
    # (sent to the whole foreground group) from ending the shell too; a trap, not
    # an ignore, so the dashboard still gets SIGINT as usual.
    script = f"trap : INT; {dashboard}; echo $? > {exit_file}; stty -a > {stty_file}"
    tmux = _Tmux(tmp_path / "tmux.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("LOGSHIP_CONFIG", "TMUX")}
    size = ["-x", "100", "-y", "30"]
    started = subprocess.run(
        tmux.command("new-session", "-d", "-s", tmux.session, *size, "sh", "-c", script),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert started.returncode == 0, started.stderr

    def drawn() -> str | None:
        screen = tmux.screen()
        return screen if "orders" in screen and "events" in screen else None

    try:
        screen = wait_for(drawn, 60, "the dashboard on the tmux screen")
        lines = screen.splitlines()
        assert all(len(line) <= 100 for line in lines)
        _line_with(lines, "orders", "breach")
        _line_with(lines, "billing", "ok")
        assert "q or Ctrl-C to quit" in screen
        assert tmux.run("send-keys", "-t", tmux.session, key).returncode == 0
        wait_for(lambda: exit_file.exists() and stty_file.exists(), 30, "the dashboard to exit")
        wait_for(lambda: stty_file.read_text(), 10, "stty's report")
        assert exit_file.read_text().strip() == "0"
        modes = stty_file.read_text().split()
        assert "icanon" in modes and "echo" in modes, modes
    finally:
        tmux.kill()
