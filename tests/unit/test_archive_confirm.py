"""archive-wal's confirmation: a segment counts as durable at the site only by its
own sha256 matching the tombstone the daemon wrote, and it waits only while the
daemon's beat says waiting pays, never beyond archive_wait."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from logship.cli.entry import confirmed_without_copy
from logship.engines.postgresql.archive_confirm import confirmed
from logship.read_ahead_beat import BEHIND, FRESH_S, HELD, SHIPPING, STOPPED, BeatWriter
from logship.spool import write_tombstone

SEGMENT = "000000010000000000000007"
CONTENT = b"wal bytes " * 4096
#: far above what any answer here should take, far below the waits it must not sit out
PROMPT_S = 1.5


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "state" / "spool" / "main"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    """The segment as PostgreSQL hands it over (its pg_wal path)."""
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    (wal / SEGMENT).write_bytes(CONTENT)
    return wal / SEGMENT


def _digest(data: bytes = CONTENT) -> str:
    return hashlib.sha256(data).hexdigest()


def _beat(spool: Path, state: str, wait_s: float) -> None:
    BeatWriter(spool, wait_s).beat(state)


def _timed(spool: Path, segment: Path) -> tuple[bool, float]:
    start = time.monotonic()
    result = confirmed(spool, segment)
    return result, time.monotonic() - start


@contextmanager
def _later(delay_s: float, action: Callable[[], None]) -> Iterator[None]:
    """Run `action` on a thread once `delay_s` has passed, while the body runs."""
    thread = threading.Timer(delay_s, action)
    thread.start()
    try:
        yield
    finally:
        thread.cancel()
        thread.join()


def test_the_same_sha256_confirms_without_waiting(spool: Path, segment: Path) -> None:
    write_tombstone(spool, SEGMENT, _digest())
    # No beat at all: a tombstone needs no daemon.
    result, took = _timed(spool, segment)
    assert result is True
    assert took < PROMPT_S


def test_a_different_sha256_is_not_confirmed(spool: Path, segment: Path) -> None:
    write_tombstone(spool, SEGMENT, _digest(b"other content"))
    _beat(spool, SHIPPING, 30)
    result, took = _timed(spool, segment)
    assert result is False
    assert took < PROMPT_S


@pytest.mark.parametrize(
    ("state", "wait_s", "age_s"),
    [
        (None, 0, 0),  # no daemon ever ran
        (SHIPPING, 30, FRESH_S + 5),  # a daemon gone or stuck
        (HELD, 30, 0),  # cut off from its site
        (BEHIND, 30, 0),  # a backlog: the segment would wait behind it
        (STOPPED, 30, 0),
        (SHIPPING, 0, 0),  # archive_wait = "0s"
    ],
)
def test_not_shipped_and_nothing_worth_waiting_for_is_refused_at_once(
    spool: Path, segment: Path, state: str | None, wait_s: float, age_s: float
) -> None:
    if state is not None:
        _beat(spool, state, wait_s)
        beat = spool / ".read-ahead"
        then = time.time() - age_s
        os.utime(beat, (then, then))
    result, took = _timed(spool, segment)
    assert result is False
    assert took < PROMPT_S


def test_a_fresh_shipping_beat_waits_for_the_tombstone(spool: Path, segment: Path) -> None:
    _beat(spool, SHIPPING, 30)
    with _later(0.4, lambda: write_tombstone(spool, SEGMENT, _digest())):
        result, took = _timed(spool, segment)
    assert result is True
    assert 0.3 < took < 0.4 + PROMPT_S


def test_a_wait_ends_after_archive_wait(spool: Path, segment: Path) -> None:
    _beat(spool, SHIPPING, 0.6)
    result, took = _timed(spool, segment)
    assert result is False
    assert 0.55 < took < 0.6 + PROMPT_S


def test_a_wait_ends_when_the_beat_turns_held(spool: Path, segment: Path) -> None:
    writer = BeatWriter(spool, 30)
    writer.beat(SHIPPING)
    with _later(0.4, lambda: writer.beat(HELD)):
        result, took = _timed(spool, segment)
    assert result is False
    assert 0.3 < took < 0.4 + PROMPT_S


def test_a_tombstone_with_other_content_ends_a_wait_unconfirmed(spool: Path, segment: Path) -> None:
    _beat(spool, SHIPPING, 30)
    with _later(0.3, lambda: write_tombstone(spool, SEGMENT, _digest(b"other"))):
        result, took = _timed(spool, segment)
    assert result is False
    assert took < 0.3 + PROMPT_S


# -- the entry point: which argument vectors take the confirmation path --------------


def _config(tmp_path: Path, state: str | None = None) -> Path:
    path = tmp_path / "logship.toml"
    path.write_text(f'[logship]\nstate_dir = "{state or tmp_path / "state"}"\n')
    return path


@pytest.mark.parametrize(
    "shape",
    [
        ["--config", "{config}", "archive-wal", "main", "{path}"],
        ["--config={config}", "archive-wal", "main", "{path}"],
        ["archive-wal", "main", "{path}"],  # $LOGSHIP_CONFIG names the config
    ],
)
def test_the_plain_archive_wal_calls_are_confirmed(
    tmp_path: Path, spool: Path, segment: Path, shape: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path)
    monkeypatch.setenv("LOGSHIP_CONFIG", str(config))
    write_tombstone(spool, SEGMENT, _digest())
    argv = [arg.format(config=config, path=segment) for arg in shape]
    assert confirmed_without_copy(argv) is True


@pytest.mark.parametrize(
    "shape",
    [
        ["--config", "{config}", "archive-wal", "main"],  # no path
        ["--config", "{config}", "archive-wal", "main", "{path}", "extra"],
        ["--config", "{config}", "restore-wal", "main", "{path}"],
        ["-v", "--config", "{config}", "archive-wal", "main", "{path}"],
        ["--config", "{config}", "-v", "archive-wal", "main", "{path}"],
        ["--configx={config}", "archive-wal", "main", "{path}"],
        ["--config", "{config}", "archive-wal", "", "{path}"],
        ["--config", "{config}", "archive-wal", "../main", "{path}"],
        ["--config", "{config}", "archive-wal", "state/main", "{path}"],
        ["--config", "{config}", "archive-wal", ".shipped", "{path}"],
        ["--config", "{config}", "archive-wal", "ma\0in", "{path}"],
        [],
    ],
)
def test_other_calls_take_the_full_path(
    tmp_path: Path, spool: Path, segment: Path, shape: list[str]
) -> None:
    config = _config(tmp_path)
    write_tombstone(spool, SEGMENT, _digest())
    argv = [arg.format(config=config, path=segment) for arg in shape]
    assert confirmed_without_copy(argv) is False


def test_doubt_takes_the_full_path(tmp_path: Path, spool: Path, segment: Path) -> None:
    write_tombstone(spool, SEGMENT, _digest())
    argv = ["--config", "{config}", "archive-wal", "main", str(segment)]
    # A config the scan cannot read with certainty: the full parser decides.
    dotted = tmp_path / "dotted.toml"
    dotted.write_text(f'logship.state_dir = "{tmp_path / "state"}"\n')
    assert confirmed_without_copy([argv[0], str(dotted), *argv[2:]]) is False
    # No config file at all.
    assert confirmed_without_copy([argv[0], str(tmp_path / "none.toml"), *argv[2:]]) is False
    # The handed-over file is gone: the full path says what is wrong.
    config = _config(tmp_path)
    segment.unlink()
    assert confirmed_without_copy([argv[0], str(config), *argv[2:]]) is False


#: modules the confirmed archive-wal call must not load: each costs milliseconds of
#: every call, and the confirmation is the whole call
HEAVY_MODULES = (
    "argparse",
    "tomllib",
    "typing",
    "dataclasses",
    "hashlib",
    "logging",
    "pydantic",
    "sqlalchemy",
    "paramiko",
)


def test_a_confirmed_archive_wal_loads_no_heavy_module(
    tmp_path: Path, spool: Path, segment: Path
) -> None:
    config = _config(tmp_path)
    write_tombstone(spool, SEGMENT, _digest())
    argv = ["--config", str(config), "archive-wal", "main", str(segment)]
    script = (
        "import sys\n"
        "from logship.cli.entry import confirmed_without_copy, run\n"  # what `logship` runs
        f"assert confirmed_without_copy({argv!r})\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert run.stdout.strip() == "[]", run.stdout + run.stderr
    # It confirmed: nothing was copied into the spool.
    assert not (spool / SEGMENT).exists()


def test_the_command_exits_0_without_a_spool_copy(
    tmp_path: Path, spool: Path, segment: Path
) -> None:
    config = _config(tmp_path)
    write_tombstone(spool, SEGMENT, _digest())
    command = [sys.executable, "-m", "logship", "--config", str(config), "archive-wal", "main"]
    done = subprocess.run([*command, str(segment)], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not (spool / SEGMENT).exists()
