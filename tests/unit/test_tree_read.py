"""Reading a small file whole for a batch: what is no longer a plain file is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from logship.engines.files.ship import NotRegularFile, SourceChanged, read_small


def test_a_file_is_read_whole_with_its_fstat(tmp_path: Path) -> None:
    path = tmp_path / "app.conf"
    path.write_bytes(b"key = value\n" * 100)
    data, before = read_small(os.fsencode(path), 4096)
    assert data == path.read_bytes()
    assert (before.st_ino, before.st_size) == (path.stat().st_ino, len(data))


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_what_is_no_longer_a_file_is_refused_without_blocking(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "was-a-file"
    if kind == "symlink":
        (tmp_path / "target").write_text("x")
        path.symlink_to(tmp_path / "target")
    elif kind == "fifo":
        os.mkfifo(path)  # opened without O_NONBLOCK this would wait for a writer
    else:
        path.mkdir()
    with pytest.raises(NotRegularFile):
        read_small(os.fsencode(path), 4096)


def test_a_file_grown_past_the_limit_is_left_for_the_next_round(tmp_path: Path) -> None:
    path = tmp_path / "grew.log"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(SourceChanged):
        read_small(os.fsencode(path), 4096)
