"""Read-ahead's source: a file is offered only while its producer marks it ready, and
a read counts only if the mark is still there after the last byte."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from factories import local_site

from logship import durable, ready_source
from logship.engines.postgresql import walnames
from logship.manifest import SiteLayout
from logship.ready_source import ReadySource, SourceReleased, still_held
from logship.ship.shipper import ship_file
from logship.spool import SpoolEntry

SEGMENT = "000000010000000000000007"
#: several read chunks, so a mark can go between two of them
CONTENT = bytes(range(256)) * (3 * durable.COPY_CHUNK // 256 + 7)


@pytest.fixture
def source(tmp_path: Path) -> ReadySource:
    wal = tmp_path / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    return ReadySource(
        connector="main",
        files_dir=wal,
        marks_dir=wal / "archive_status",
        mark_suffix=".ready",
        accepts=walnames.is_archivable,
        wait_s=10.0,
    )


def _ready(source: ReadySource, name: str = SEGMENT, content: bytes = CONTENT) -> None:
    (source.files_dir / name).write_bytes(content)
    source.mark_of(name).touch()


def test_a_marked_plain_file_is_offered(source: ReadySource) -> None:
    _ready(source)
    entry = source.entry(SEGMENT)
    assert entry is not None
    assert entry.path == source.files_dir / SEGMENT
    assert entry.size == len(CONTENT)
    assert entry.held_by == source.marks_dir / f"{SEGMENT}.ready"
    still_held(entry)  # marked: no exception


def test_an_unmarked_file_is_not_offered(source: ReadySource) -> None:
    (source.files_dir / SEGMENT).write_bytes(CONTENT)
    assert source.entry(SEGMENT) is None
    (source.marks_dir / f"{SEGMENT}.done").touch()  # archived already: not ours
    assert source.entry(SEGMENT) is None


def test_a_link_a_folder_or_a_missing_file_is_not_offered(
    source: ReadySource, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(CONTENT)
    (source.files_dir / SEGMENT).symlink_to(elsewhere)
    source.mark_of(SEGMENT).touch()
    assert source.entry(SEGMENT) is None

    folder = "000000010000000000000008"
    (source.files_dir / folder).mkdir()
    source.mark_of(folder).touch()
    assert source.entry(folder) is None

    missing = "000000010000000000000009"
    source.mark_of(missing).touch()
    assert source.entry(missing) is None


def test_names_the_engine_does_not_accept_are_not_offered(source: ReadySource) -> None:
    _ready(source, "RECOVERYXLOG")
    _ready(source, "000000010000000000000007.partial.tmp")
    assert source.entry("RECOVERYXLOG") is None
    assert source.name_of_mark("RECOVERYXLOG.ready") is None
    assert source.name_of_mark(f"{SEGMENT}.done") is None
    _ready(source)
    _ready(source, "00000002.history", b"history")
    assert sorted(source.ready_names()) == sorted(["00000002.history", SEGMENT])


def test_no_marks_folder_means_nothing_ready(tmp_path: Path) -> None:
    source = ReadySource("main", tmp_path, tmp_path / "absent", ".ready", walnames.is_archivable, 1)
    assert source.ready_names() == []


def test_a_released_file_raises(source: ReadySource) -> None:
    _ready(source)
    entry = source.entry(SEGMENT)
    assert entry is not None
    source.mark_of(SEGMENT).rename(source.marks_dir / f"{SEGMENT}.done")
    with pytest.raises(SourceReleased):
        still_held(entry)
    # A spool file has no mark to lose.
    still_held(SpoolEntry("main", entry.path, entry.size, entry.closed_at))


# -- shipping a read-ahead file ------------------------------------------------------


def _site_files(layout: SiteLayout) -> list[str]:
    return sorted(p.name for d in (layout.wal_dir, layout.manifest_dir) for p in Path(d).iterdir())


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_file_handed_over_during_the_read_leaves_nothing_at_the_site(
    tmp_path: Path, source: ReadySource, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ready(source)
    entry = source.entry(SEGMENT)
    assert entry is not None
    read = durable.read_chunks

    def handed_over_after_the_first_chunk(path: Path) -> Iterator[bytes]:
        chunks: Iterable[bytes] = read(path)
        for index, chunk in enumerate(chunks):
            if index == 1:
                # archive-wal copied it and PostgreSQL marked it done.
                source.mark_of(SEGMENT).rename(source.marks_dir / f"{SEGMENT}.done")
            yield chunk

    monkeypatch.setattr(ready_source, "read_chunks", handed_over_after_the_first_chunk)
    transport, layout = local_site(tmp_path)
    with pytest.raises(SourceReleased):
        ship_file(transport, layout, entry, compression, time.time)
    assert _site_files(layout) == []  # no record, no stored file, no temp


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_file_still_marked_ships_as_from_the_spool(
    tmp_path: Path, source: ReadySource, compression: str
) -> None:
    _ready(source)
    entry = source.entry(SEGMENT)
    assert entry is not None
    transport, layout = local_site(tmp_path)
    record = ship_file(transport, layout, entry, compression, time.time)
    assert record.sha256 == durable.sha256_of(source.files_dir / SEGMENT)
    assert record.size == len(CONTENT)
    assert SEGMENT + ".json" in _site_files(layout)
    # The producer's file and mark are untouched.
    assert (source.files_dir / SEGMENT).read_bytes() == CONTENT
    assert source.mark_of(SEGMENT).exists()


def test_a_file_recycled_before_it_is_opened_is_released_not_a_site_failure(
    tmp_path: Path, source: ReadySource
) -> None:
    _ready(source)
    entry = source.entry(SEGMENT)
    assert entry is not None
    # archive-wal copied it, PostgreSQL marked it done and recycled it.
    source.mark_of(SEGMENT).rename(source.marks_dir / f"{SEGMENT}.done")
    (source.files_dir / SEGMENT).unlink()
    transport, layout = local_site(tmp_path)
    with pytest.raises(SourceReleased):
        ship_file(transport, layout, entry, "zstd", time.time)
    assert _site_files(layout) == []


def test_a_file_handed_over_while_checked_against_its_record_is_released_not_a_conflict(
    tmp_path: Path, source: ReadySource
) -> None:
    _ready(source)
    entry = source.entry(SEGMENT)
    assert entry is not None
    transport, layout = local_site(tmp_path)
    ship_file(transport, layout, entry, "zstd", time.time)  # then a crash before the catalog
    # Handed over meanwhile, and its file already reused for other WAL.
    source.mark_of(SEGMENT).rename(source.marks_dir / f"{SEGMENT}.done")
    (source.files_dir / SEGMENT).write_bytes(b"other WAL" * 100)
    with pytest.raises(SourceReleased):
        ship_file(transport, layout, entry, "zstd", time.time)
