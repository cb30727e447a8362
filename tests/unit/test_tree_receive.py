"""`tree-receive` at the site: batches landed atomically, hostile input refused."""

from __future__ import annotations

import fcntl
import io
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from offline_config import write_offline_config

from logship.cli.pipe_input import frames_in
from logship.engines.files.receive import MAX_FILE, STALE_TEMP_S, Receiver
from logship.engines.files.stream import COMMIT, StreamError, file_frame
from logship.temp_names import FILES_TEMP_PREFIX as TEMP_PREFIX
from logship.temp_names import is_files_temp_name as is_temp_name

MTIME_NS = 1_700_000_000_123_456_789


def _serve(target: Path, stream: bytes) -> list[dict[str, object]]:
    out = io.BytesIO()
    Receiver(target).serve(io.BytesIO(stream), out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _leftovers(target: Path) -> list[str]:
    return [
        os.path.join(folder, name)
        for folder, _, names in os.walk(target)
        for name in names
        if is_temp_name(os.fsencode(name))
    ]


def test_a_batch_lands_with_modes_and_mtimes_after_its_commit(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "app.conf").write_text("old\n")
    odd = b"etc/new\nline \xe9.sh"
    stream = (
        file_frame(b"etc/app.conf", 0o640, MTIME_NS, b"new\n")
        + file_frame(odd, 0o755, MTIME_NS, b"#!/bin/sh\n")
        + file_frame(b"top.txt", 0o600, MTIME_NS, b"")
        + COMMIT
    )
    replies = _serve(tmp_path, stream)
    assert replies == [
        {"ready": True},
        {"i": 0, "error": None},
        {"i": 1, "error": None},
        {"i": 2, "error": None},
        {"done": 3},
    ]
    assert (tmp_path / "etc" / "app.conf").read_text() == "new\n"
    st = os.stat(os.path.join(os.fsencode(tmp_path), odd))
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_mtime_ns == MTIME_NS
    assert (tmp_path / "top.txt").read_bytes() == b""
    assert _leftovers(tmp_path) == []


def test_a_batch_cut_before_its_commit_changes_nothing_visible(tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_text("old\n")
    replies = _serve(tmp_path, file_frame(b"app.conf", 0o644, MTIME_NS, b"half"))
    assert replies == [{"ready": True}]
    assert (tmp_path / "app.conf").read_text() == "old\n"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "path",
    [
        *(b"../escape", b"/etc/passwd", b"a/../../escape", b"./x", b"a//b", b"a/", b"a/./b"),
        *(b"..", b".", b"a/..", b"a\0b", TEMP_PREFIX + b"x", b"a/" + TEMP_PREFIX + b"x"),
    ],
)
def test_paths_that_leave_the_root_or_name_a_temp_are_refused(tmp_path: Path, path: bytes) -> None:
    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)
    replies = _serve(target, file_frame(path, 0o644, MTIME_NS, b"x") + COMMIT)
    assert replies[1]["i"] == 0 and "refused path" in str(replies[1]["error"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert sorted(os.listdir(target / "a")) == []


def test_a_symlinked_folder_at_the_site_never_leads_a_write_outside(tmp_path: Path) -> None:
    target = tmp_path / "target"
    outside = tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (target / "link").symlink_to(outside)
    replies = _serve(
        target,
        file_frame(b"link/evil", 0o644, MTIME_NS, b"x")
        + file_frame(b"fine", 0o644, MTIME_NS, b"ok")
        + COMMIT,
    )
    assert "outside the mirror root" in str(replies[1]["error"])
    assert replies[2] == {"i": 1, "error": None}
    assert list(outside.iterdir()) == [] and (target / "fine").read_text() == "ok"


def test_a_folder_in_the_way_fails_that_file_only(tmp_path: Path) -> None:
    (tmp_path / "was-a-folder").mkdir()
    (tmp_path / "was-a-folder" / "inside").write_text("x")
    replies = _serve(
        tmp_path,
        file_frame(b"was-a-folder", 0o644, MTIME_NS, b"now a file")
        + file_frame(b"other", 0o644, MTIME_NS, b"fine")
        + COMMIT,
    )
    assert replies[1]["error"] and replies[2] == {"i": 1, "error": None}
    assert (tmp_path / "was-a-folder").is_dir() and (tmp_path / "other").read_text() == "fine"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "stream",
    [
        b"X",  # an unknown frame
        b"F\x00",  # a header cut short
        b"F" + (0).to_bytes(4, "big") + bytes(20),  # an empty path
        b"F" + (1).to_bytes(4, "big") + bytes(12) + (MAX_FILE + 1).to_bytes(8, "big"),
    ],
    ids=["unknown", "cut", "empty-path", "too-big"],
)
def test_a_broken_stream_is_an_error_not_a_write(tmp_path: Path, stream: bytes) -> None:
    with pytest.raises(StreamError):
        _serve(tmp_path, stream)
    assert list(tmp_path.iterdir()) == []


def test_a_receiver_is_ready_and_lands_batches_while_it_still_sweeps(tmp_path: Path) -> None:
    release = threading.Event()
    sweeping = threading.Event()

    class _SlowSweep(Receiver):
        def sweep_stale_temps(self, now: float | None = None) -> int:
            sweeping.set()
            release.wait(30)  # a large tree's walk
            return 0

    out = io.BytesIO()
    try:
        _SlowSweep(tmp_path).serve(
            io.BytesIO(file_frame(b"app.conf", 0o644, MTIME_NS, b"new\n") + COMMIT), out
        )
        assert sweeping.wait(10)
        replies = [json.loads(line) for line in out.getvalue().splitlines()]
        assert replies == [{"ready": True}, {"i": 0, "error": None}, {"done": 1}]
        assert (tmp_path / "app.conf").read_text() == "new\n" and not release.is_set()
    finally:
        release.set()


def test_only_temps_untouched_for_long_are_swept(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    stale = tmp_path / "a" / (TEMP_PREFIX.decode() + "0123456789abcdef")
    fresh = tmp_path / (TEMP_PREFIX.decode() + "fedcba9876543210")
    kept = tmp_path / "a" / "real.conf"
    for path in (stale, fresh, kept):
        path.write_text("x")
    # ctime cannot be set back: the fresh temp is touched until its ctime is
    # later than the stale one's (file times tick in jiffies), and both are
    # judged from a point in the future between the two.
    deadline = time.monotonic() + 10
    while os.lstat(fresh).st_ctime <= os.lstat(stale).st_ctime:
        assert time.monotonic() < deadline, "file times do not move"
        os.utime(fresh)
    between = (os.lstat(stale).st_ctime + os.lstat(fresh).st_ctime) / 2
    receiver = Receiver(tmp_path)
    assert receiver.sweep_stale_temps(now=between + STALE_TEMP_S - 1) == 0
    assert receiver.sweep_stale_temps(now=between + STALE_TEMP_S) == 1
    assert not stale.exists() and fresh.exists() and kept.exists()


class _Recording(Receiver):
    """A receiver that notes the order of its syncs and renames."""

    def __init__(self, target: Path, fail_sync: bool = False) -> None:
        super().__init__(target)
        self.steps: list[str] = []
        self._fail_sync = fail_sync

    def sync(self) -> None:
        if self._fail_sync:
            raise OSError(5, "syncfs failed")
        super().sync()
        self.steps.append("sync")

    def rename_all(self, batch: list[tuple[bytes, bytes, str | None]]) -> list[str | None]:
        errors = super().rename_all(batch)
        self.steps.append(f"renamed {len(batch)}")
        return errors


class _KeptOpen(io.BytesIO):
    """stdout that stays readable after the receiver closes it, and notes each
    batch's answer in `steps`."""

    def __init__(self, steps: list[str] | None = None) -> None:
        super().__init__()
        self._steps = steps

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self._steps is not None and b'"done"' in data:
            self._steps.append("answered")
        return super().write(data)

    def close(self) -> None:
        self.closed_by_receiver = True


def test_batches_back_to_back_are_answered_in_order_each_after_a_sync(tmp_path: Path) -> None:
    """Batches arrive faster than they commit: a batch's renames may share the
    next batch's syncfs, but no batch is answered before a syncfs after its renames."""
    sizes = [3, 1, 4, 2]
    stream = b""
    for batch, size in enumerate(sizes):
        for n in range(size):
            stream += file_frame(f"b{batch}-{n}".encode(), 0o644, MTIME_NS, b"x" * n)
        stream += COMMIT
    receiver = _Recording(tmp_path)
    out = _KeptOpen(receiver.steps)
    receiver.serve(io.BytesIO(stream), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["done"] for r in replies if "done" in r] == sizes
    assert all(r["error"] is None for r in replies if "i" in r)
    steps = receiver.steps
    renamed_at = [i for i, step in enumerate(steps) if step.startswith("renamed")]
    answered_at = [i for i, step in enumerate(steps) if step == "answered"]
    assert len(renamed_at) == len(answered_at) == len(sizes), steps
    for renamed, answered in zip(renamed_at, answered_at, strict=True):
        assert renamed < answered and "sync" in steps[renamed:answered], steps
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"b{b}-{n}" for b, size in enumerate(sizes) for n in range(size)
    )
    assert _leftovers(tmp_path) == []


def test_a_failed_sync_ends_the_answers_and_renames_nothing(tmp_path: Path) -> None:
    stream = file_frame(b"a.conf", 0o644, MTIME_NS, b"a") + COMMIT
    stream += file_frame(b"b.conf", 0o644, MTIME_NS, b"b") + COMMIT
    out = _KeptOpen()
    with pytest.raises(OSError, match="syncfs failed"):
        _Recording(tmp_path, fail_sync=True).serve(io.BytesIO(stream), out)
    # Only the ready line: the client sees the stream end and ships over SFTP.
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [{"ready": True}]
    assert getattr(out, "closed_by_receiver", False)
    assert not (tmp_path / "a.conf").exists() and not (tmp_path / "b.conf").exists()


def test_frames_come_in_through_a_large_pipe_or_any_other_stdin(tmp_path: Path) -> None:
    """tree-receive reads stdin with a large buffer and grows its pipe from sshd
    (8 KiB reads woke sshd every 8 KiB); stdin that is not a pipe works as is."""
    frames = file_frame(b"a.conf", 0o644, MTIME_NS, b"x" * 100_000) + COMMIT
    read_end, write_end = os.pipe()

    def send() -> None:
        os.write(write_end, frames)
        os.close(write_end)  # the end of the stream

    try:
        with frames_in(read_end) as stream:
            assert fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ) >= 128 * 1024
            writer = threading.Thread(target=send)
            writer.start()
            Receiver(tmp_path).serve(stream, io.BytesIO())
            writer.join()
    finally:
        os.close(read_end)
    assert (tmp_path / "a.conf").read_bytes() == b"x" * 100_000
    source = tmp_path / "frames"
    source.write_bytes(file_frame(b"b.conf", 0o600, MTIME_NS, b"y") + COMMIT)
    with open(source, "rb") as raw, frames_in(raw.fileno()) as stream:
        Receiver(tmp_path).serve(stream, io.BytesIO())
    assert (tmp_path / "b.conf").read_bytes() == b"y"


FILES_CONNECTOR = """
kind = "files"
site = "dr"
rpo = "60s"
source = "/opt/app"
[standby]
target = "{target}"
"""


def _site_config(tmp_path: Path, connectors: dict[str, str]) -> Path:
    """The site's config: two database connectors, and these files connectors."""
    path = write_offline_config(tmp_path, make_state=False)
    for stem, text in connectors.items():
        (tmp_path / "connectors" / f"{stem}.toml").write_text(text)
    return path


def test_the_target_read_without_the_model_is_the_models(tmp_path: Path) -> None:
    from logship.config.load import load_config
    from logship.engines.files.engine import files_connector
    from logship.engines.files.site_target import read_files_target

    path = _site_config(tmp_path, {"app": FILES_CONNECTOR.format(target="/srv/app mirror")})
    expected = files_connector(load_config(path), "app").standby.target
    assert read_files_target(path, "app") == expected


@pytest.mark.parametrize(
    ("connectors", "message"),
    [
        ({"app": FILES_CONNECTOR.format(target="relative/app")}, "absolute folder"),
        ({"app": FILES_CONNECTOR.format(target="/")}, "absolute folder"),
        ({"app": FILES_CONNECTOR.replace('target = "{target}"', "")}, "standby.target': missing"),
        ({"app": FILES_CONNECTOR.replace("files", "postgresql", 1)}, 'not kind = "files"'),
        ({"other": FILES_CONNECTOR.format(target="/srv/app")}, "no connector named 'app'"),
        (
            {
                "one": 'name = "app"\n' + FILES_CONNECTOR.format(target="/srv/one"),
                "two": 'name = "app"\n' + FILES_CONNECTOR.format(target="/srv/two"),
            },
            "defined twice",
        ),
    ],
    ids=["relative", "root", "missing", "not-files", "unknown", "twice"],
)
def test_a_receiver_without_a_usable_target_answers_one_error_line(
    tmp_path: Path, connectors: dict[str, str], message: str
) -> None:
    path = _site_config(tmp_path, connectors)
    result = subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(path), "tree-receive", "app"],
        input=b"",
        capture_output=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    # The mirror reads this line and falls back to SFTP; the user reads stderr.
    (line,) = result.stdout.splitlines()
    assert message in json.loads(line)["error"]
    assert message in result.stderr.decode() and b"Traceback" not in result.stderr


def test_a_folder_swapped_for_a_link_within_a_batch_is_not_followed(tmp_path: Path) -> None:
    """The first file of a batch finds `a` a real folder; before the next one, a
    local user at the site swaps `a` for a link outside. Each file is resolved
    again from the held root, never through the link."""
    target, outside = tmp_path / "target", tmp_path / "outside"
    (target / "a").mkdir(parents=True)
    outside.mkdir()

    class _Swapping(Receiver):
        def _write(self, frame, *args):  # type: ignore[no-untyped-def]
            written = super()._write(frame, *args)
            if frame.path == b"a/first":
                os.rename(target / "a", tmp_path / "moved-away")
                (target / "a").symlink_to(outside)
            return written

    out = io.BytesIO()
    stream = (
        file_frame(b"a/first", 0o644, MTIME_NS, b"1")
        + file_frame(b"a/second", 0o644, MTIME_NS, b"2")
        + COMMIT
    )
    _Swapping(target).serve(io.BytesIO(stream), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert replies[1] == {"i": 0, "error": None}
    assert "outside the mirror root" in str(replies[2]["error"])
    assert list(outside.iterdir()) == []
    # The first file landed in the folder it was written in, wherever that went.
    assert (tmp_path / "moved-away" / "first").read_text() == "1"
    assert _leftovers(tmp_path) == []


def _old_temp_name(name: bytes) -> bytes:
    """The fixed temp name an earlier logship used for `name`: anyone could compute it."""
    import hashlib

    return TEMP_PREFIX + hashlib.sha256(name).hexdigest()[:16].encode()


def test_a_link_planted_at_a_predictable_temp_name_changes_nothing(tmp_path: Path) -> None:
    target, victim = tmp_path / "target", tmp_path / "victim"
    target.mkdir()
    victim.write_text("precious\n")
    os.symlink(victim, os.path.join(os.fsencode(target), _old_temp_name(b"app.conf")))
    replies = _serve(target, file_frame(b"app.conf", 0o644, MTIME_NS, b"new\n") + COMMIT)
    assert replies[1] == {"i": 0, "error": None}
    assert victim.read_text() == "precious\n"
    assert (target / "app.conf").read_text() == "new\n"


def test_setuid_setgid_and_sticky_never_land_at_the_site(tmp_path: Path) -> None:
    stream = file_frame(b"suid", 0o6755, MTIME_NS, b"#!/bin/sh\n")
    stream += file_frame(b"sticky", 0o1644, MTIME_NS, b"x") + COMMIT
    _serve(tmp_path, stream)
    assert stat.S_IMODE(os.stat(tmp_path / "suid").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "sticky").st_mode) == 0o644


@pytest.mark.parametrize(("value", "kept"), [(None, False), ("true", True), ('"yes"', None)])
def test_keep_write_bits_is_a_boolean_and_false_unless_set(
    tmp_path: Path, value: str | None, kept: bool | None
) -> None:
    from logship.config.load import load_config
    from logship.engines.files.engine import files_connector
    from logship.errors import ConfigError

    text = FILES_CONNECTOR.format(target="/srv/app")
    if value is not None:
        text = text.replace("[standby]", f"keep_write_bits = {value}\n[standby]")
    path = _site_config(tmp_path, {"app": text})
    if kept is None:
        with pytest.raises(ConfigError, match="keep_write_bits"):
            load_config(path)
        return
    assert files_connector(load_config(path), "app").keep_write_bits is kept
