"""A base backup stopped mid-stream leaves nothing `standby restore` could pick up.

kill -9 gives the process no chance to tidy up: the half-written temp file stays,
but without a backup.json it is never a candidate, the catalog learns of the
death at the next backup, and retention removes the leftovers. SIGTERM unwinds:
the temp file goes at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from logship.catalog.store import Catalog
from logship.demo_sandbox.deployment import Deployment, logship_command
from logship.demo_sandbox.procs import child_pids, kill_tree
from logship.temp_names import TEMP_PREFIX

#: enough incompressible-ish data that streaming it takes a few seconds
BLOB_ROWS = 240_000  # a stream that lasts long enough to be caught mid-way


def _start_backup(dep: Deployment) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *dep.user.command_prefix(),
            *logship_command(),
            "--config",
            str(dep.config_path),
            "base-backup",
            dep.connector,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=dep.root,
    )


def _temp_files(dep: Deployment) -> list[Path]:
    base = dep.incoming / dep.connector / "base"
    return list(base.glob(f"*/{TEMP_PREFIX}*")) if base.exists() else []


def _growing_temp(dep: Deployment) -> Path | None:
    """The backup's temp file once its first MiB is in it: the stream is under way."""
    for path in _temp_files(dep):
        try:
            if path.stat().st_size > 1024 * 1024:
                return path
        except FileNotFoundError:
            continue
    return None


def _wait_under_way(dep: Deployment, proc: subprocess.Popen[bytes], timeout: float = 120) -> Path:
    """The backup's temp once it holds its first MiB. Polled finely: the whole stream
    can take well under a second here, and a coarse poll would miss it."""
    deadline = time.monotonic() + timeout
    while (temp := _growing_temp(dep)) is None:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(
                f"the backup exited {proc.returncode} before its stream was seen: "
                f"{err.decode(errors='replace')[-2000:]}"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for the backup stream")
        time.sleep(0.005)
    return temp


def _catalog_states(dep: Deployment) -> list[tuple[str, str, str | None]]:
    catalog = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}")
    try:
        return [(b.backup_id, b.state, b.error) for b in catalog.backups(dep.connector)]
    finally:
        catalog.close()


@pytest.fixture
def loaded(deployment: Deployment) -> Deployment:
    deployment.primary.execute(
        "create table blob (id int, payload text);"
        "alter table blob alter column payload set storage external;"  # no pglz
        "insert into blob select g, (select string_agg(md5(random()::text || g || i), '')"
        f" from generate_series(1, 24) i) from generate_series(1, {BLOB_ROWS}) g"
    )
    return deployment


def test_killed_backup_leaves_nothing_restorable_and_the_next_one_succeeds(
    loaded: Deployment,
) -> None:
    dep = loaded
    proc = _start_backup(dep)
    try:
        temp = _wait_under_way(dep, proc)
        killed_id = temp.parent.name
        kill_tree(proc.pid)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    # No record: the folder is no backup, by id or as the newest.
    assert not (temp.parent / "backup.json").exists()
    by_id = dep.logship("standby", "restore", dep.connector, "--backup", killed_id, check=False)
    assert by_id.returncode == 1 and "no backup" in by_id.stderr, by_id.stderr
    latest = dep.logship("standby", "restore", dep.connector, check=False)
    assert latest.returncode == 1 and "no base backup" in latest.stderr, latest.stderr
    assert not dep.standby.data_dir.exists()
    # Nobody knows yet that it died: the row says "running" until the lock is free.
    assert _catalog_states(dep) == [(killed_id, "running", None)]

    dep.logship("base-backup", dep.connector)
    states = _catalog_states(dep)
    assert states[0][:2] == (killed_id, "failed") and "interrupted" in (states[0][2] or "")
    assert states[1][1] == "done"
    dep.logship("standby", "restore", dep.connector)
    # WAL written after the backup (autovacuum on the new table, for one) is in
    # a segment only the daemon ships: without it the switch below could never
    # be replayed.
    dep.start_daemon()
    dep.wait_replayed(dep.switch_wal())
    assert dep.standby.query("select count(*) from blob") == [(BLOB_ROWS,)]


def test_sigterm_mid_stream_removes_the_temp_file_and_records_the_failure(
    loaded: Deployment,
) -> None:
    dep = loaded
    proc = _start_backup(dep)
    try:
        temp = _wait_under_way(dep, proc)
        # Signal logship itself: runuser would only pass the signal on.
        for pid in child_pids(proc.pid) or [proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0, err.decode(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    assert not temp.exists() and _temp_files(dep) == []
    assert not (temp.parent / "backup.json").exists()
    ((backup_id, state, error),) = _catalog_states(dep)
    assert (backup_id, state, error) == (temp.parent.name, "failed", "interrupted")
