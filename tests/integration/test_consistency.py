"""Consistency points: a database LSN paired with a files connector's sync generation."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from logship.consistency import SitePoint
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.files.generations import (
    LISTED_MAX,
    GenerationRecord,
    changed_since,
    read_generations,
)
from logship.engines.postgresql.files_report import files_report
from logship.manifest import SiteLayout

ODD = b"new\nline \xe9 $x.conf"


def test_generation_lines_round_trip_any_bytes_and_skip_torn_ones(tmp_path: Path) -> None:
    first = GenerationRecord.for_round(1, 10.0, [b"etc/app.conf", ODD])
    second = GenerationRecord.for_round(2, 11.0, [b"bin/run.sh"])
    log = tmp_path / "generations.jsonl"
    # A crash during an append leaves a torn last line: it is not a record.
    log.write_bytes(first.to_line() + second.to_line() + b'{"generation": 3, "at"')
    assert read_generations(log) == [first, second]
    assert read_generations(tmp_path / "missing.jsonl") == []


def test_a_huge_round_lists_its_first_paths_and_counts_them_all() -> None:
    paths = [f"f{n:05}".encode() for n in range(LISTED_MAX + 5)]
    record = GenerationRecord.for_round(1, 0.0, paths)
    assert record.count == LISTED_MAX + 5 and len(record.paths) == LISTED_MAX
    since = changed_since([record], 0)
    assert not since.complete and since.rounds == 1


def test_changed_since_lists_distinct_paths_after_a_generation() -> None:
    records = [
        GenerationRecord.for_round(1, 0.0, [b"a"]),
        GenerationRecord.for_round(2, 1.0, [b"b", b"c"]),
        GenerationRecord.for_round(3, 2.0, [b"c", b"d"]),
    ]
    since = changed_since(records, 1)
    assert (since.site_generation, since.rounds, since.paths) == (3, 2, (b"b", b"c", b"d"))
    assert since.complete
    assert changed_since(records, 3).rounds == 0


def _site_point(root: Path, point_id: str, lsn: str, generation: int, timeline: int = 1) -> None:
    point = SitePoint(point_id, "pg", "app", lsn, timeline, 1.0, "on demand", 1.1, generation, 1.2)
    folder = Path(SiteLayout.for_connector(root.as_posix(), "app").consistency_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{point_id}.json").write_bytes(point.to_bytes())


def test_promote_picks_the_newest_point_the_standby_replayed(tmp_path: Path) -> None:
    _site_point(tmp_path, "p1", "0/3000000", 2)
    _site_point(tmp_path, "p2", "0/5000000", 4)
    _site_point(tmp_path, "p3", "0/9000000", 7)  # not replayed: not the database's state
    _site_point(tmp_path, "future", "0/4000000", 9, timeline=3)  # a later timeline
    (tmp_path / "app" / "consistency" / "bad.json").write_text("{not json")
    log = Path(SiteLayout.for_connector(tmp_path.as_posix(), "app").generations_log)
    log.write_bytes(
        b"".join(
            GenerationRecord.for_round(n, float(n), [f"file{n}".encode()]).to_line()
            for n in range(1, 8)
        )
    )
    report = files_report(tmp_path, "app", "pg", timeline=1, replayed_lsn=0x6000000)
    assert report.point is not None and report.point.point_id == "p2"
    assert report.changed.paths == (b"file5", b"file6", b"file7")
    line = report.line()
    assert "goes with generation 4 (point p2" in line
    assert "3 path(s) changed after it" in line and "file7" in line
    assert "1 unreadable point file(s)" in line
    assert report.to_json()["changed_after"] == ["file5", "file6", "file7"]

    before_any = files_report(tmp_path, "app", "pg", timeline=1, replayed_lsn=0x1000000)
    assert before_any.point is None
    assert "which file state goes with the database is unknown" in before_any.line()
    assert "the site holds generation 7" in before_any.line()


def test_a_point_at_the_site_generation_says_the_files_are_that_state(tmp_path: Path) -> None:
    _site_point(tmp_path, "p1", "0/3000000", 2)
    log = Path(SiteLayout.for_connector(tmp_path.as_posix(), "app").generations_log)
    log.write_bytes(b"".join(GenerationRecord.for_round(n, 0.0, [b"x"]).to_line() for n in (1, 2)))
    report = files_report(tmp_path, "app", "pg", timeline=1, replayed_lsn=0x3000000)
    assert report.line().endswith(
        "the site holds generation 2: the files at the site are that state"
    )


# -- real clusters, sshd and daemon -----------------------------------------------------


def _add_files_connector(dep: Deployment) -> tuple[Path, Path]:
    source = dep.root / "app-src"
    source.mkdir(mode=0o755)
    dep.user.chown(source)
    target = dep.root / "standby-site" / "app"
    (dep.config_dir / "connectors" / "app.toml").write_text(
        f"""kind = "files"
site = "dr"
rpo = "60s"
source = "{source}"
settle = "0.2s"

[standby]
target = "{target}"
"""
    )
    return source, target


def _write(path: Path, text: str, dep: Deployment) -> None:
    path.write_text(text)
    dep.user.chown(path)


@pytest.mark.e2e
def test_mark_then_promote_names_the_file_state_of_the_database(deployment: Deployment) -> None:
    dep = deployment
    dep.check_dsn = True
    dep.write_config()
    source, target = _add_files_connector(dep)
    _write(source / "app.conf", "version = 1\n", dep)
    dep.start_daemon()
    dep.standby_up()  # its base backup takes a point as well
    wait_for(lambda: (target / "app.conf").exists(), 60, "app.conf mirrored")

    _write(source / "app.conf", "version = 2\n", dep)
    marked = dep.logship("mark", dep.connector, "--json", "--wait", "60")
    point = json.loads(marked.stdout)
    assert point["complete"], point
    (part,) = point["files"]
    assert part["connector"] == "app" and part["generation"] >= 2
    # The content the point covers is durable at the site.
    assert (target / "app.conf").read_text() == "version = 2\n"
    site = SiteLayout.for_connector(dep.incoming.as_posix(), "app")
    written = json.loads((Path(site.consistency_dir) / f"{point['point']}.json").read_text())
    assert (written["lsn"], written["generation"]) == (point["lsn"], part["generation"])
    reasons = sorted(
        json.loads(path.read_text())["reason"] for path in Path(site.consistency_dir).glob("*.json")
    )
    assert len(reasons) == 2 and reasons[0].startswith("base backup ") and reasons[1] == "on demand"
    log = Path(site.generations_log)
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600

    # Changed after the point: newer than the database the standby will hold.
    _write(source / "after.conf", "added after the point\n", dep)
    wait_for(lambda: (target / "after.conf").exists(), 60, "after.conf mirrored")
    status = json.loads(dep.logship("status", "app", "--json").stdout)["connectors"][0]
    assert status["consistency_point"] == point["point"]
    assert status["sync_generation"] > part["generation"] and status["consistency_open"] == 0

    dep.wait_replayed(dep.switch_wal())
    dep.primary.stop(mode="immediate")
    dep.stop_daemon()
    result = dep.logship("promote", dep.connector, "--timeout", "120", check=False)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [x for x in result.stdout.splitlines() if "] files app:" in x]
    assert f"goes with generation {part['generation']} (point {point['point']}" in line
    assert "after.conf" in line and "app.conf" not in line
    marker = json.loads((dep.incoming / dep.connector / "PROMOTED").read_text())
    (files,) = marker["files"]
    assert files["point"] == point["point"] and files["changed_after"] == ["after.conf"]


@pytest.mark.e2e
def test_mark_refuses_without_a_files_connector_and_waits_in_vain_without_a_daemon(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.write_config()
    alone = dep.logship("mark", dep.connector, check=False)
    assert alone.returncode == 2 and "no files connector at site dr" in alone.stderr
    _add_files_connector(dep)
    started = time.monotonic()
    waiting = dep.logship("mark", dep.connector, "--wait", "0.5", check=False)
    assert waiting.returncode == 1 and time.monotonic() - started < 30
    assert "is recorded but not complete" in waiting.stdout
