"""A lane process ships spool files over its own SSH connection (real sshd, real
files), reports conflicts and lost links as the daemon's own connection would, and
never outlives the daemon's interest in it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sshd_site import running_sshd, site_config

from logship import faults
from logship.config.model import SiteConfig
from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import wait_for
from logship.demo_sandbox.sshd import SshServer
from logship.errors import HostKeyRefused
from logship.manifest import SiteLayout
from logship.ship.lane_process import LaneFailed, LaneProcess
from logship.ship.shipper import ShipConflict
from logship.spool import SpoolEntry, entry_for

SEGMENT = "000000010000000000000003"


@dataclass
class Site:
    base: Path
    sshd: SshServer
    config: SiteConfig
    layout: SiteLayout


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    user = OsUser.for_postgres()
    with running_sshd("logship-lane-", user) as (base, sshd):
        root = base / "incoming"
        root.mkdir(mode=0o700)
        user.chown(root)
        config = site_config(sshd, root)
        layout = SiteLayout.for_connector(config.root, "main")
        for folder in (layout.wal_dir, layout.manifest_dir):
            Path(folder).mkdir(parents=True, mode=0o700)
            user.chown(Path(folder))
        yield Site(base, sshd, config, layout)


def _spool_file(directory: Path, name: str, content: bytes) -> SpoolEntry:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    entry = entry_for("main", path)
    assert entry is not None
    return entry


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A child not yet waited for is a zombie: gone for this purpose.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_lane_process_ships_a_file_durably_with_its_record(
    site: Site, tmp_path: Path, compression: str
) -> None:
    content = os.urandom(3 * 1024 * 1024) + bytes(5 * 1024 * 1024)
    name = f"00000001000000000000001{'0' if compression == 'none' else '1'}"
    entry = _spool_file(tmp_path, name, content)
    lane = LaneProcess(site.config)
    try:
        assert lane.pid != os.getpid() and lane.is_alive
        record = lane.ship(site.layout, entry, compression)
    finally:
        lane.close()
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert record.size == len(content) and record.compression == compression
    stored = Path(site.layout.stored_wal(name, compression))
    assert stored.stat().st_size == record.stored_size
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == record.stored_sha256
    assert Path(site.layout.record_path(name)).is_file()
    # Closing it ends the child; nothing is left running.
    assert _gone(lane.pid) and not lane.is_alive


def test_a_conflict_is_a_ship_conflict_and_the_lane_stays_up(site: Site, tmp_path: Path) -> None:
    lane = LaneProcess(site.config)
    try:
        first = _spool_file(tmp_path / "a", SEGMENT, b"first" * 1000)
        lane.ship(site.layout, first, "none")
        # Shipping it again is a no-op; other content under the same name is refused.
        assert (
            lane.ship(site.layout, first, "none").sha256
            == hashlib.sha256(b"first" * 1000).hexdigest()
        )
        other = _spool_file(tmp_path / "b", SEGMENT, b"other" * 1000)
        with pytest.raises(ShipConflict, match="different from the spool copy"):
            lane.ship(site.layout, other, "none")
        assert lane.is_alive
    finally:
        lane.close()


def test_a_killed_lane_process_fails_its_file_and_is_no_longer_alive(
    site: Site, tmp_path: Path
) -> None:
    lane = LaneProcess(site.config)
    try:
        os.kill(lane.pid, signal.SIGKILL)
        entry = _spool_file(tmp_path, "000000010000000000000020", b"x" * 4096)
        with pytest.raises(LaneFailed, match="lane process ended"):
            lane.ship(site.layout, entry, "none")
        assert not lane.is_alive
    finally:
        lane.close()
    assert not Path(site.layout.record_path(entry.name)).exists()


def test_an_unknown_host_key_refuses_the_lane_and_leaves_no_process(
    site: Site, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = site.config.model_copy(update={"known_hosts": empty})
    children_before = _children()
    with pytest.raises(HostKeyRefused, match="refusing an unknown host key"):
        LaneProcess(config)
    assert _children() == children_before


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def test_a_crash_point_reached_in_a_lane_kills_the_daemon_too(site: Site, tmp_path: Path) -> None:
    """For the fault suite a lane is part of the daemon: kill -9 at a crash point
    there takes the daemon down as well, as it would without lanes."""
    entry = _spool_file(tmp_path, "000000010000000000000030", os.urandom(2 * 1024 * 1024))
    flag = tmp_path / "crashed"
    script = textwrap.dedent(
        """
        import pickle, sys
        from logship.ship.lane_process import LaneProcess
        site, layout, entry = pickle.loads(bytes.fromhex(sys.argv[1]))
        lane = LaneProcess(site)
        print(lane.pid, flush=True)
        lane.ship(layout, entry, "none")
        print("survived", flush=True)
        """
    )
    import pickle

    arguments = pickle.dumps((site.config, site.layout, entry)).hex()
    env = dict(os.environ, **{faults.ENV: f"ship-mid-upload:{flag}"})
    daemon = subprocess.run(
        [sys.executable, "-c", script, arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert daemon.returncode == -signal.SIGKILL, daemon.stderr
    assert flag.exists() and "survived" not in daemon.stdout
    lane_pid = int(daemon.stdout.split()[0])
    wait_for(lambda: _gone(lane_pid), 30, "the lane process gone with its daemon")
    # Nothing half-written is visible under the segment's name.
    assert not Path(site.layout.stored_wal(entry.name, "none")).exists()


def test_a_lane_process_ends_when_its_daemon_is_killed(site: Site, tmp_path: Path) -> None:
    """Even with its stdin still open (here a leftover process holds the pipe, as a
    file in flight would keep it busy), a lane does not outlive its daemon."""
    script = textwrap.dedent(
        """
        import pickle, subprocess, sys, time
        from logship.ship.lane_process import LaneProcess
        lane = LaneProcess(pickle.loads(bytes.fromhex(sys.argv[1])))
        fd = lane._to_child.fileno()
        holder = subprocess.Popen(["sleep", "120"], pass_fds=[fd])
        print(lane.pid, holder.pid, flush=True)
        time.sleep(120)
        """
    )
    import pickle

    daemon = subprocess.Popen(
        [sys.executable, "-c", script, pickle.dumps(site.config).hex()],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert daemon.stdout is not None
    lane_pid, holder_pid = map(int, daemon.stdout.readline().split())
    try:
        daemon.kill()
        daemon.wait(30)
        wait_for(lambda: _gone(lane_pid), 30, "the lane process gone with its daemon")
    finally:
        os.kill(holder_pid, signal.SIGKILL)


def test_a_failing_lane_process_says_why_in_one_json_line(site: Site) -> None:
    """The child's stderr is the daemon's log: a bug in the child is one JSON line
    there (with its traceback), not loose text."""
    from logship.ship import lane_process

    child = subprocess.Popen(
        [sys.executable, "-m", "logship.ship.lane_process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    lane_process._send(child.stdin, site.config)
    assert lane_process._receive(child.stdout) is None  # connected
    lane_process._send(child.stdin, "not a request")
    _, err = child.communicate(timeout=30)
    assert child.returncode == 1
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert [line["event"] for line in lines] == ["lane process failed"]
    assert lines[0]["level"] == "error" and "AssertionError" in lines[0]["exception"]


@pytest.mark.parametrize("debug", [False, True])
def test_a_lane_process_logs_at_the_daemons_level(
    site: Site, tmp_path: Path, capfd: pytest.CaptureFixture[str], debug: bool
) -> None:
    """A daemon run with --debug gets its lanes' debug lines too (the lane's SSH
    session, say); without it a lane is as quiet as the daemon."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    name = f"00000001000000000000002{int(debug)}"
    entry = _spool_file(tmp_path, name, os.urandom(4096))
    try:
        lane = LaneProcess(site.config)
        try:
            lane.ship(site.layout, entry, "none")
        finally:
            lane.close()
    finally:
        root.setLevel(level)
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()]
    debug_lines = [line for line in lines if line["level"] == "debug"]
    if debug:
        assert debug_lines, lines
    else:
        assert not debug_lines, debug_lines


PLANTED = """
import importlib, pathlib, sys

pathlib.Path({marker!r}).write_text("imported from the daemon's working directory")
# Hand over to the real paramiko, so the lane works and only the marker tells.
del sys.modules["paramiko"]
sys.path[:] = [p for p in sys.path if p not in ("", {folder!r})]
sys.modules["paramiko"] = importlib.import_module("paramiko")
"""


def test_a_module_planted_in_the_daemons_working_directory_is_not_imported(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane is a new interpreter: with `python -m` in the daemon's cwd it would put
    that folder first on its import path, so anyone able to write there would run
    code as the daemon's user."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "planted-module-ran"
    (cwd / "paramiko.py").write_text(PLANTED.format(marker=str(marker), folder=str(cwd)))
    monkeypatch.chdir(cwd)
    entry = _spool_file(tmp_path / "spool", "00000001000000000000007A", b"wal" * 1000)
    lane = LaneProcess(site.config)
    try:
        lane_cwd = os.readlink(f"/proc/{lane.pid}/cwd")
        lane.ship(site.layout, entry, "none")
    finally:
        lane.close()
    assert not marker.exists(), marker.read_text()
    assert lane_cwd == "/"
