"""`logship demo` as a user runs it: a real sandbox, shipping, replay, exposure under
load with archive shipping only and with streaming, a matching comparison, and
nothing left behind (no process, no folder)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from logship.demo_sandbox.sshd import DEFAULT_SSHD

DEMO_TIMEOUT_S = 300


def _demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Piped, so the demo prints its plain-line form, which is what is asserted on.
    return subprocess.run(
        [sys.executable, "-m", "logship", "demo", *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        cwd=cwd,
        check=False,
    )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"  # a zombie has exited


def _processes_mentioning(path: Path) -> list[str]:
    """Every live process whose command line names `path` (servers name their dirs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # exited while we looked
        if str(path) in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def _exposure_line(out: str, label: str) -> dict[str, str]:
    match = re.search(
        rf"^exposure {re.escape(label)}: p50=(?P<p50>[0-9.]+)s max=(?P<max>[0-9.]+)s "
        r"readings=(?P<readings>\d+) streaming=(?P<streaming>\S+) "
        r"sync_mode=(?P<sync_mode>\S+) tps=(?P<tps>\S+)$",
        out,
        re.M,
    )
    assert match, out
    return match.groupdict()


def test_demo_ships_replays_matches_and_leaves_nothing(reachable_dir: Path) -> None:
    sandbox = reachable_dir / "demo"
    result = _demo("--dir", str(sandbox), "--seconds", "3", cwd=reachable_dir)
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"

    # Shipping: segments reached the DR site over SSH while pgbench wrote.
    shipped = [int(n) for n in re.findall(r"\bshipped=(\d+)", out)]
    assert shipped and max(shipped) > 0, out
    assert re.search(r"\bmain=(ok|warn)\b", out), out
    # Replay: the standby reported a replay position and caught up with the switch.
    assert re.search(r"standby_replayed=[0-9A-F]+/[0-9A-F]+", out), out
    assert "catching up: WAL switched at" in out, out
    # Then streaming is turned on and the same load runs again; `status` exposure
    # during each load, archive shipping only against streaming through the tunnel.
    assert re.search(r"^done in .*: turning streaming on: .*the standby streams from", out, re.M)
    archive = _exposure_line(out, "archive shipping only")
    assert archive["streaming"] == "off" and archive["sync_mode"] == "n/a", archive
    streamed = _exposure_line(out, "streaming through the SSH link")
    assert streamed["streaming"] == "streaming" and streamed["sync_mode"] == "async", streamed
    for figures in (archive, streamed):
        assert int(figures["readings"]) >= 3, figures  # a median of something
        assert float(figures["p50"]) <= float(figures["max"]), figures
    # The product's measured figure, not the speed of this code: what was streamed
    # and flushed at the standby counts as durable there.
    assert float(streamed["p50"]) < 1.0, out
    assert "keeps the median exposure at" in out, out
    # The comparison, both figures, and the verdict.
    compared = re.findall(r"^compare .*: primary=(\S+) standby=(\S+) same$", out, re.M)
    assert len(compared) == 2, out
    assert all(primary == standby for primary, standby in compared)
    assert int(compared[0][0]) > 0  # pgbench committed transactions
    assert "verdict: MATCH" in out, out
    # Then the disaster and the checked promote, with its loss report and RTO.
    assert "`logship promote` at the DR site" in out, out
    assert re.search(r"you lose at most [0-9.]+ s of commits", out), out
    assert re.search(r"RTO [0-9.]+ s", out), out

    # Nothing it started is left: the pids it reported are gone, no process names
    # the sandbox, and the folder itself is removed.
    pids = {int(pid) for pid in re.findall(r"\bpid (\d+)", out)}
    assert len(pids) >= 4, out  # sshd, primary, daemon, standby
    assert not [pid for pid in pids if _alive(pid)], out
    assert not _processes_mentioning(sandbox)
    assert not sandbox.exists()


@pytest.mark.skipif(not DEFAULT_SSHD.exists(), reason=f"{DEFAULT_SSHD} is not installed")
def test_demo_refuses_a_folder_that_is_not_a_sandbox(reachable_dir: Path) -> None:
    precious = reachable_dir / "precious.txt"
    precious.write_text("keep me\n")
    result = _demo("--dir", str(reachable_dir), cwd=reachable_dir)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "not a logship demo sandbox" in result.stderr
    assert precious.read_text() == "keep me\n"
    assert sorted(p.name for p in reachable_dir.iterdir()) == ["precious.txt"]
