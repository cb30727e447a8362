"""The files connector's mirror on real parts: a watched tree, a real sshd, SFTP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import pytest
from sshd_site import running_sshd

from logship import temp_names
from logship.catalog.store import Catalog
from logship.config.load import load_config
from logship.config.model import Config
from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import wait_for
from logship.demo_sandbox.sshd import SshServer
from logship.engines.files import rows, sftp_site, ship
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.sftp_site import SftpFilesSite
from logship.engines.files.status import files_status
from logship.engines.files.track import Tracker
from logship.engines.files.verify_run import run_verify
from logship.engines.files.watcher import FilesWatcher, Touched
from logship.engines.files.worker import FilesWorker, sftp_files_site
from logship.ship.sftp import SftpTransport
from logship.status.monitor import collect_statuses
from logship.temp_names import FILES_TEMP_PREFIX as TEMP_PREFIX
from logship.temp_names import is_files_temp_name as is_temp_name
from logship.ui.status_table import null_reasons

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

CONNECTOR = "app"
AWKWARD = [
    b"with space.conf",
    b'quote\'s "double".txt',
    b"dollar $HOME `id`.sh",
    b"new\nline",
    b"latin1-\xe9t\xe9.txt",  # not UTF-8
    b"-starts-with-dash",
]


@dataclass
class Site:
    base: Path
    user: OsUser
    sshd: SshServer


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    user = OsUser.for_postgres()
    with running_sshd("logship-files-", user) as (base, sshd):
        yield Site(base, user, sshd)


@dataclass
class Setup:
    config: Config
    source: Path
    target: Path


_counter = iter(range(1000))


def _setup(
    site: Site,
    *,
    delete: bool = True,
    settle: str = "0.3s",
    receiver: bool = True,
    site_logship: list[str] | None = None,
    io_timeout: str = "30s",
    extra: str = "",
) -> Setup:
    """`receiver`: logship runs at the site (batches through `tree-receive`); without
    it the site has no logship and every batch goes over SFTP alone. `site_logship`:
    how the site runs it, when not as this same logship."""
    n = next(_counter)
    root = site.base / f"case{n}"
    root.mkdir(mode=0o755)
    source = root / "src"
    source.mkdir()
    standby = root / "standby"
    standby.mkdir(mode=0o755)
    site.user.chown(standby)
    target = standby / "app"  # created by the mirror, as the SSH user
    incoming = root / "incoming"  # the site root: generations log, consistency points
    incoming.mkdir(mode=0o700)
    site.user.chown(incoming)
    conf = root / "conf"
    (conf / "connectors").mkdir(parents=True)
    (conf / "logship.toml").write_text(
        f"""[logship]
state_dir = "{root / "state"}"
reconcile_interval = "2s"

[sites.dr]
host = "{site.sshd.host}"
port = {site.sshd.port}
user = "{site.user.name}"
identity_file = "{site.sshd.client_key}"
known_hosts = "{site.sshd.known_hosts}"
root = "{incoming}"
connect_timeout = "3s"
io_timeout = "{io_timeout}"
command = {json.dumps(_site_command(conf, site_logship) if receiver else ["/nonexistent/logship"])}
"""
    )
    (conf / "connectors" / f"{CONNECTOR}.toml").write_text(
        f"""kind = "files"
site = "dr"
rpo = "60s"
source = "{source}"
exclude = ["*.tmp", "*.swp", "cache/"]
delete = {"true" if delete else "false"}
{extra}
settle = "{settle}"

[standby]
target = "{target}"
"""
    )
    (root / "state").mkdir(mode=0o700)
    return Setup(load_config(conf / "logship.toml"), source, target)


def _site_command(conf: Path, logship: list[str] | None = None) -> list[str]:
    return [*(logship or [sys.executable, "-m", "logship"]), "--config", str(conf / "logship.toml")]


@dataclass
class Running:
    catalog: Catalog
    worker: FilesWorker
    stop: threading.Event


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for run in started:
        run.stop.set()
        run.worker.wake()
        run.worker.join(timeout=30)
        run.catalog.close()


def _start(setup: Setup, running: list[Running]) -> Running:
    config = setup.config
    catalog = Catalog(config.catalog_url)
    stop = threading.Event()
    connector = config.connectors[CONNECTOR]
    worker = FilesWorker(
        connector,
        config.site_of(connector),
        catalog,
        SftpTransport,
        time.time,
        config.logship.reconcile_interval,
        stop,
    )
    worker.start()
    run = Running(catalog, worker, stop)
    running.append(run)
    return run


def snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Every path below `root`: type, mode, size, sha256 / link target, mtime (s)."""
    found: dict[bytes, tuple[object, ...]] = {}
    top = os.fsencode(root)
    if not os.path.isdir(top):
        return found
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = full[len(top) + 1 :]
            if is_temp_name(rel):
                found[rel] = ("temp",)
                continue
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", mode)
            else:
                digest = hashlib.sha256(Path(os.fsdecode(full)).read_bytes()).hexdigest()
                found[rel] = ("file", mode, st.st_size, digest, int(st.st_mtime))
    return found


RULES = ExcludeRules(["*.tmp", "*.swp", "cache/"])


def _shipped(rel: bytes, kind: object) -> bool:
    parts = rel.split(b"/")
    ancestors = (b"/".join(parts[:depth]) for depth in range(1, len(parts)))
    if any(RULES.excludes(folder, is_dir=True) for folder in ancestors):
        return False
    return not RULES.excludes(rel, is_dir=kind == "dir")


def _wanted(source: Path) -> dict[bytes, tuple[object, ...]]:
    return {k: v for k, v in snapshot(source).items() if _shipped(k, v[0])}


def _converged(setup: Setup, timeout: float = 20) -> None:
    def check() -> bool:
        return snapshot(setup.target) == _wanted(setup.source)

    try:
        wait_for(check, timeout, "the mirror to match the source")
    except TimeoutError:
        src = _wanted(setup.source)
        dst = snapshot(setup.target)
        diff = {
            k: (src.get(k), dst.get(k)) for k in set(src) | set(dst) if src.get(k) != dst.get(k)
        }
        raise AssertionError(f"trees differ: {diff}") from None


def _populate(source: Path) -> None:
    root = os.fsencode(source)
    (source / "etc").mkdir()
    (source / "etc" / "app.conf").write_text("port = 8080\n")
    (source / "bin").mkdir()
    script = source / "bin" / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    (source / "empty").mkdir(mode=0o705)
    (source / "empty").chmod(0o705)
    os.symlink("etc/app.conf", source / "current.conf")
    os.symlink("/nonexistent/dangling", source / "dangling")
    for name in AWKWARD:
        with open(os.path.join(root, b"etc", name), "wb") as out:
            out.write(name * 3)
    (source / "scratch.tmp").write_text("never shipped")
    (source / "etc" / ".app.conf.swp").write_text("never shipped")
    (source / "cache" / "deep").mkdir(parents=True)
    (source / "cache" / "deep" / "blob").write_text("never shipped")


def test_a_site_logship_without_no_sweep_still_takes_batches(
    site: Site, running: list[Running], caplog: pytest.LogCaptureFixture
) -> None:
    """An older logship at the site refuses the second receiver's --no-sweep: the
    batches go to the first one, not all over SFTP."""
    caplog.set_level(logging.INFO, "logship.files")
    older = site.base / f"older-logship-{next(_counter)}"
    older.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --no-sweep "*) echo "unrecognized arguments: --no-sweep" >&2; '
        "exit 2;; esac\n"
        f'exec {shlex.join([sys.executable, "-m", "logship"])} "$@"\n'
    )
    older.chmod(0o755)
    setup = _setup(site, site_logship=[str(older)])
    _populate(setup.source)
    _start(setup, running)
    _converged(setup)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "no tree-receive" in m]
    assert [m for m in messages if m.startswith("shipped batch")]


def test_a_site_logship_that_never_answers_costs_the_io_timeout_then_sftp(
    site: Site, running: list[Running], caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver stuck at its start (it reads its stdin and never says it is
    ready): the mirror gives up on it after the site's io_timeout, not after the
    two minutes a batch's answer may take, and ships over SFTP."""
    caplog.set_level(logging.INFO, "logship.files")
    stuck = site.base / f"stuck-logship-{next(_counter)}"
    # cat ends when the mirror closes the channel: nothing is left running.
    stuck.write_text("#!/bin/sh\nexec cat > /dev/null\n")
    stuck.chmod(0o755)
    setup = _setup(site, site_logship=[str(stuck)], io_timeout="2s")
    _populate(setup.source)
    _start(setup, running)
    _converged(setup, timeout=30)
    fallback = [r for r in caplog.records if "no tree-receive" in r.getMessage()]
    assert fallback, [r.getMessage() for r in caplog.records]
    assert "did not start" in fallback[0].__dict__["logship_fields"]["error"]


def _status(setup: Setup, catalog: Catalog):  # type: ignore[no-untyped-def]
    (status,) = collect_statuses(setup.config, catalog, [CONNECTOR], time.time())
    return status


@pytest.mark.parametrize("receiver", [True, False], ids=["tree-receive", "sftp-only"])
def test_initial_sync_then_edits_creates_deletes_and_renames(
    site: Site, running: list[Running], receiver: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "logship.files")
    setup = _setup(site, receiver=receiver)
    _populate(setup.source)
    run = _start(setup, running)
    _converged(setup)
    fallback = [r for r in caplog.records if "no tree-receive" in r.getMessage()]
    assert bool(fallback) is not receiver
    assert not (setup.target / "cache").exists()
    assert not (setup.target / "scratch.tmp").exists()
    # The site's tree can match a moment before the catalog's commit says so.
    wait_for(lambda: _status(setup, run.catalog).pending_files == 0, 10, "nothing pending")
    status = _status(setup, run.catalog)
    assert status.kind == "files"
    assert status.state == "ok"
    assert status.pending_files == 0 and status.pending_bytes == 0
    assert status.rpo_exposure_s == 0.0 and status.transport_lag_s == 0.0
    assert status.apply_lag_s is None and status.last_applied is None
    assert isinstance(status.last_shipped, str)
    assert any("not applicable to a files connector" in r for r in null_reasons(status))
    assert "standby not sampled" not in " ".join(null_reasons(status))
    json.dumps(status.to_json())

    # Edits, a mode change, new folders several levels deep written at once,
    # a deletion, and renames of a file and of a folder.
    (setup.source / "etc" / "app.conf").write_text("port = 9090\n")
    (setup.source / "bin" / "run.sh").chmod(0o700)
    deep = setup.source / "plugins" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "plugin.py").write_text("print('deep')\n")
    (setup.source / "plugins" / "a" / "top.txt").write_text("top\n")
    os.unlink(os.path.join(os.fsencode(setup.source), b"etc", AWKWARD[3]))
    os.rename(setup.source / "current.conf", setup.source / "now.conf")
    os.rename(setup.source / "bin", setup.source / "sbin")
    (setup.source / "more.tmp").write_text("excluded")
    _converged(setup)
    assert not (setup.target / "bin").exists()
    wait_for(lambda: _status(setup, run.catalog).pending_files == 0, 10, "nothing pending")
    assert rows.pending_paths(run.catalog, CONNECTOR) == set()


def _rewrite_keeping_size_and_mtime(path: Path, body: bytes) -> None:
    """New content of the same length, the old mtime put back (as `cp -p` over
    the file, or a deploy tool that keeps times, would leave it)."""
    before = path.stat()
    assert len(body) == before.st_size
    path.write_bytes(body)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_a_rewrite_keeping_size_and_mtime_reaches_the_site_live_and_after_a_restart(
    site: Site, running: list[Running]
) -> None:
    """Only the ctime tells these rewrites apart from an untouched file: the
    watcher's event while running, the first scan after a restart."""
    setup = _setup(site)
    _populate(setup.source)
    conf = setup.source / "etc" / "app.conf"
    run = _start(setup, running)
    _converged(setup)
    _rewrite_keeping_size_and_mtime(conf, b"port = 9191\n")
    _converged(setup)  # compares sha256 too

    run.stop.set()
    run.worker.wake()
    run.worker.join(timeout=30)
    assert not run.worker.is_alive()
    _rewrite_keeping_size_and_mtime(conf, b"port = 7272\n")
    script = setup.source / "bin" / "run.sh"
    _rewrite_keeping_size_and_mtime(script, script.read_bytes().replace(b"hi", b"ho"))
    _start(setup, running)
    _converged(setup)
    assert (setup.target / "etc" / "app.conf").read_bytes() == b"port = 7272\n"


def test_delete_false_keeps_deleted_paths_at_the_site(site: Site, running: list[Running]) -> None:
    setup = _setup(site, delete=False)
    (setup.source / "keep.txt").write_text("keep me\n")
    _start(setup, running)
    wait_for(lambda: (setup.target / "keep.txt").exists(), 20, "keep.txt shipped")
    (setup.source / "keep.txt").unlink()
    (setup.source / "new.txt").write_text("new\n")
    wait_for(lambda: (setup.target / "new.txt").exists(), 20, "new.txt shipped")
    assert (setup.target / "keep.txt").read_text() == "keep me\n"


def test_link_down_during_changes_then_the_trees_converge(
    site: Site, running: list[Running]
) -> None:
    setup = _setup(site)
    _populate(setup.source)
    run = _start(setup, running)
    _converged(setup)
    site.sshd.cut()
    try:
        (setup.source / "etc" / "app.conf").write_text("changed while down\n")
        (setup.source / "offline" / "x").mkdir(parents=True)
        (setup.source / "offline" / "x" / "f").write_bytes(b"\x00" * 70000)
        (setup.source / "empty").rmdir()
        os.rename(setup.source / "etc", setup.source / "etc2")
        # The link is seen down and the changes are tracked independently: under
        # load either can come first, so wait for both.
        wait_for(
            lambda: (s := _status(setup, run.catalog)).state == "down" and bool(s.pending_files),
            20,
            "the link seen down with the changes pending",
        )
        status = _status(setup, run.catalog)
        assert status.pending_files and status.pending_files > 0
        assert rows.pending_paths(run.catalog, CONNECTOR)
    finally:
        site.sshd.start()
    _converged(setup, timeout=60)
    wait_for(lambda: _status(setup, run.catalog).state == "ok", 20, "ok again")


def test_a_file_written_slowly_ships_only_complete(site: Site, running: list[Running]) -> None:
    setup = _setup(site, settle="0.5s")
    _start(setup, running)
    wait_for(lambda: setup.target.is_dir(), 20, "the mirror root")
    pieces = [bytes([65 + i]) * 50_000 for i in range(6)]
    full = b"".join(pieces)
    seen: set[bytes] = set()
    done = threading.Event()

    def watch() -> None:
        target = setup.target / "slow.bin"
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(target.read_bytes())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with open(setup.source / "slow.bin", "wb") as out:
            for piece in pieces:
                out.write(piece)
                out.flush()
                time.sleep(0.15)  # the slow writer being simulated, shorter than settle
        wait_for(
            lambda: (
                (setup.target / "slow.bin").exists()
                and (setup.target / "slow.bin").read_bytes() == full
            ),
            20,
            "slow.bin shipped",
        )
    finally:
        done.set()
        watcher.join()
    assert seen <= {full}


#: the daemon peaks at about 80 MiB here (small-file batches included); a whole
#: copy of the 100 MiB file on top of the interpreter could not stay below this
PEAK_RSS_MIB = 140


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def test_the_daemon_mirrors_a_large_file_and_odd_names(site: Site) -> None:
    setup = _setup(site)
    _populate(setup.source)
    big = setup.source / "data" / "big.bin"
    big.parent.mkdir()
    block = os.urandom(1 << 20)
    with open(big, "wb") as out:
        for i in range(100):
            out.write(block[i:] + block[:i])
    config_path = setup.config.path
    log_path = config_path.parent / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "logship", "--config", str(config_path), "run"],
            stdout=log,
            stderr=log,
        )
    try:
        _converged(setup, timeout=60)
        assert (setup.target / "data" / "big.bin").stat().st_size == 100 << 20
        # A change after the start travels too.
        (setup.source / "etc" / "late.conf").write_text("late\n")
        _converged(setup, timeout=20)

        def status_entry() -> dict[str, object]:
            out = subprocess.run(
                [sys.executable, "-m", "logship", "--config", str(config_path), "status", "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert out.returncode == 0, out.stderr
            (entry,) = json.loads(out.stdout)["connectors"]
            return dict(entry)

        # The site's tree can match a moment before the catalog's commit says so.
        wait_for(lambda: status_entry()["pending_files"] == 0, 20, "nothing pending")
        entry = status_entry()
        assert entry["kind"] == "files"
        assert entry["state"] == "ok"
        assert entry["pending_files"] == 0 and entry["rpo_exposure_s"] == 0.0
        assert entry["apply_lag_s"] is None and entry["last_applied"] is None
        # Streamed, never read whole: the daemon's peak memory stays well below
        # what a copy of the 100 MiB file on top of the interpreter would take.
        peak_mib = _peak_rss_mib(proc.pid)
        print(f"daemon peak RSS {peak_mib:.0f} MiB")
        assert peak_mib < PEAK_RSS_MIB
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]
    assert '"stopped"' in log_path.read_text()


def test_an_inotify_overflow_asks_for_a_rescan(tmp_path: Path) -> None:
    watcher = FilesWatcher(tmp_path)
    watcher.start()
    try:
        assert not watcher.take_overflow()
        # What watchdog does when the kernel drops events: it only logs.
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert watcher.take_overflow()
        assert not watcher.take_overflow()
    finally:
        watcher.stop()


def test_odd_names_are_shown_escaped() -> None:
    assert rows.show_path(b"etc/a b.conf") == "etc/a b.conf"
    assert rows.show_path(b"new\nline") == "new\\nline"
    assert rows.show_path(b"caf\xe9") == "caf\\xe9"
    assert rows.show_path("é".encode()) == "é"


def test_files_state_follows_exposure_and_the_link() -> None:
    tree = rows.FilesSummary(
        rows=3,
        pending_files=1,
        pending_bytes=10,
        oldest_pending_at=1000.0,
        failing=0,
        first_error=None,
        last_shipped=b"a",
        last_shipped_at=990.0,
    )
    up = SimpleNamespace(reachable=True, error=None)

    def state(now: float, site: object = up) -> str:
        status = files_status(
            name="app",
            kind="files",
            site="dr",
            rpo_target_s=60,
            now=now,
            summary=tree,
            site_status=site,  # type: ignore[arg-type]
        )
        return str(status.state)

    assert state(1010) == "ok"
    assert state(1040) == "warn"
    assert state(1061) == "breach"
    assert state(1010, SimpleNamespace(reachable=False, error="cut")) == "down"
    idle = files_status(
        name="app",
        kind="files",
        site="dr",
        rpo_target_s=60,
        now=5000,
        summary=None,
        site_status=None,
    )
    assert idle.pending_files is None and idle.rpo_exposure_s is None


def _tree_site(setup: Setup) -> tuple[SftpTransport, SftpFilesSite]:
    connector = setup.config.connectors[CONNECTOR]
    transport = SftpTransport(setup.config.site_of(connector))
    tree = SftpFilesSite(transport, setup.target)
    tree.ensure_root()
    return transport, tree


def _small_files(source: Path, count: int) -> list[ship.BatchFile]:
    files = []
    for n in range(count):
        path = source / f"f{n:03d}.conf"
        path.write_bytes(f"file {n}\n".encode() * (n + 1))
        path.chmod(0o755 if n % 3 == 0 else 0o640)
        data, before = ship.read_small(os.fsencode(path), ship.BATCH_READ_MAX)
        files.append(ship.BatchFile(os.fsencode(path.name), data, before))
    return files


def test_a_batch_cut_before_its_renames_leaves_no_visible_file(site: Site) -> None:
    setup = _setup(site)
    files = _small_files(setup.source, 20)
    transport, tree = _tree_site(setup)
    try:
        assert tree._syncfs_usable()
        real = tree._syncfs

        def link_lost() -> None:
            raise EOFError("link lost")

        tree._syncfs = link_lost  # type: ignore[method-assign]
        with pytest.raises(EOFError):
            tree.start_files(files).finish()
        # Written and closed, but never renamed: only hidden temps at the site.
        left = snapshot(setup.target)
        assert left and set(left.values()) == {("temp",)}

        tree._syncfs = real  # type: ignore[method-assign]
        assert tree.start_files(files).finish() == [None] * len(files)
        assert snapshot(setup.target) == snapshot(setup.source)
    finally:
        transport.close()


def test_a_batch_without_sync_at_the_site_fsyncs_each_file(site: Site) -> None:
    setup = _setup(site)
    files = _small_files(setup.source, 12)
    transport, tree = _tree_site(setup)
    try:
        tree._syncfs_works = False  # a site where `sync -f` cannot run
        assert tree.start_files(files).finish() == [None] * len(files)
        assert snapshot(setup.target) == snapshot(setup.source)
    finally:
        transport.close()


def test_a_file_changed_during_its_batch_is_not_shipped(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file whose lstat after the read differs from the one before stays pending,
    and nothing of it reaches the site; the rest of its batch lands (here through
    `tree-receive`, which puts a file in place before answering)."""
    setup = _setup(site)
    connector = setup.config.connectors[CONNECTOR]
    _small_files(setup.source, 5)
    changed_ino = (setup.source / "f002.conf").stat().st_ino
    real_same_file = ship.same_file

    def same_file(before: os.stat_result, after: os.stat_result) -> bool:
        return after.st_ino != changed_ino and real_same_file(before, after)

    monkeypatch.setattr(ship, "same_file", same_file)
    catalog = Catalog(setup.config.catalog_url)
    transport = SftpTransport(setup.config.site_of(connector))
    try:
        Tracker(
            catalog, CONNECTOR, setup.source, ExcludeRules([]), propagate_deletes=True
        ).reconcile(time.time())
        tree = sftp_files_site(transport, connector)
        shipper = ship.FilesShipper(catalog, CONNECTOR, setup.source, 0.0, time.time)
        assert shipper.ship_round(tree, lambda: True, lambda: False) == 4
        tree.close()
        found = snapshot(setup.target)
        assert b"f002.conf" not in found and ("temp",) not in found.values()
        assert len(found) == 4
        left = rows.all_rows(catalog, CONNECTOR)[b"f002.conf"]
        assert left.state == rows.PENDING and left.next_try_at is not None
    finally:
        transport.close()
        catalog.close()


# -- a hostile source or site: nothing lands outside the mirror ---------------------


@dataclass
class Driven:
    """The mirror's parts driven by hand: the watcher's events are the test's."""

    setup: Setup
    catalog: Catalog
    transport: SftpTransport
    tree: ship.FilesSite
    tracker: Tracker
    shipper: ship.FilesShipper

    def round(self) -> int:
        return self.shipper.ship_round(self.tree, lambda: True, lambda: False)

    def settled(self, path: bytes, *, deep: bool = False) -> None:
        self.tracker.touch(Touched(path, deep), time.time())


@contextlib.contextmanager
def _driven(site: Site, *, receiver: bool, extra: str = "") -> Iterator[Driven]:
    setup = _setup(site, receiver=receiver, extra=extra)
    connector = setup.config.connectors[CONNECTOR]
    catalog = Catalog(setup.config.catalog_url)
    transport = SftpTransport(setup.config.site_of(connector))
    try:
        tree: ship.FilesSite
        if receiver:
            tree = sftp_files_site(transport, connector)
        else:
            tree = SftpFilesSite(transport, setup.target)
            tree.ensure_root()
        tracker = Tracker(
            catalog, CONNECTOR, setup.source, ExcludeRules([]), propagate_deletes=True
        )
        shipper = ship.FilesShipper(
            catalog,
            CONNECTOR,
            setup.source,
            0.0,
            time.time,
            keep_write_bits=connector.keep_write_bits,
        )
        yield Driven(setup, catalog, transport, tree, tracker, shipper)
        tree.close()
    finally:
        transport.close()
        catalog.close()


def _victim(site: Site, setup: Setup) -> Path:
    """A folder of the SSH user's outside the mirror, with a key file in it (as
    its ~/.ssh would be)."""
    outside = setup.target.parent / "dot-ssh"
    outside.mkdir(mode=0o700)
    keys = outside / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAAlegit admin\n")
    for path in (outside, keys):
        site.user.chown(path)
    return outside


@pytest.mark.parametrize(
    ("receiver", "size"),
    [(False, 100), (True, ship.BATCH_FILE_MAX + 1), (True, 100)],
    ids=["sftp-only", "tree-receive-big-file", "tree-receive-small-file"],
)
def test_a_file_never_lands_through_a_link_its_folder_replaced(
    site: Site, receiver: bool, size: int
) -> None:
    """The attack: ship a symlink `a` pointing outside the mirror, replace `a` at
    the source by a folder, and keep the folder busy so that only `a/x` settles.
    `a/x` must wait for `a` to reach the site as a folder, never go through the link."""
    with _driven(site, receiver=receiver) as run:
        source, target = run.setup.source, run.setup.target
        outside = _victim(site, run.setup)
        os.symlink(outside, source / "a")
        run.tracker.reconcile(time.time())
        assert run.round() == 1
        assert (target / "a").is_symlink()

        (source / "a").unlink()
        (source / "a").mkdir()
        payload = b"ssh-ed25519 AAAAattacker\n".ljust(size, b"#")
        (source / "a" / "authorized_keys").write_bytes(payload)
        run.settled(b"a/authorized_keys")  # the folder `a` itself is still busy
        run.round()
        assert (outside / "authorized_keys").read_text() == "ssh-ed25519 AAAAlegit admin\n"
        assert sorted(os.listdir(outside)) == ["authorized_keys"]
        left = rows.all_rows(run.catalog, CONNECTOR)[b"a/authorized_keys"]
        assert left.state == rows.PENDING

        # Once the folder settles it lands as a folder, then its file inside it.
        run.settled(b"a", deep=True)
        wait_for(
            lambda: run.round() == 0 and not rows.pending_paths(run.catalog, CONNECTOR),
            20,
            "a/ shipped",
        )
        assert (target / "a").is_dir() and not (target / "a").is_symlink()
        assert (target / "a" / "authorized_keys").read_bytes() == payload
        assert (outside / "authorized_keys").read_text() == "ssh-ed25519 AAAAlegit admin\n"


def test_sftp_never_writes_removes_or_sets_through_a_linked_folder_at_the_site(
    site: Site,
) -> None:
    """Whatever the catalog believes, every SFTP operation looks at the folders above
    its path first: one that is a link (or not a folder) is never gone through."""
    setup = _setup(site, receiver=False)
    transport, tree = _tree_site(setup)
    try:
        outside = _victim(site, setup)
        sub = outside / "sub"
        sub.mkdir(mode=0o700)
        site.user.chown(sub)
        os.utime(sub, (1_000_000_000, 1_000_000_000))
        before = {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in outside.iterdir()}
        os.symlink(outside, setup.target / "a")
        os.symlink(outside, setup.target / "deep")

        tree.remove(b"a/authorized_keys")
        tree.remove(b"a/sub")
        assert tree.set_dir_times([(b"a/sub", 2_000_000_000 * 10**9)]) == [False]
        made = tree.make_dirs([(b"a/sub", 0o777), (b"a/new", 0o755), (b"deep/x/y", 0o755)])
        assert all(outcome is not None for outcome in made), made
        with pytest.raises(OSError, match="not a folder"):
            tree.put_symlink(b"a/link", b"/etc/passwd")
        (setup.source / "x").write_bytes(b"attacker\n" * 200_000)
        with pytest.raises(OSError, match="not a folder"):
            tree.put_file(b"a/big", os.fsencode(setup.source / "x"), unchanged=ship.same_file)
        files = _small_files(setup.source, 2)
        linked = [ship.BatchFile(b"a/" + f.relative, f.data, f.before) for f in files]
        outcomes = tree.start_files([*linked, files[0]]).finish()
        assert outcomes[0] is not None and outcomes[1] is not None and outcomes[2] is None

        after = {p.name: (p.lstat().st_mode, p.lstat().st_mtime_ns) for p in outside.iterdir()}
        assert after == before
        assert (outside / "authorized_keys").read_text() == "ssh-ed25519 AAAAlegit admin\n"
    finally:
        transport.close()


def test_a_link_a_local_user_plants_at_a_temp_name_is_never_written_through(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second local user at the site, who can write in a mirrored folder, plants a
    link at the name an upload's temp will have (an earlier logship's names were
    predictable; here the test makes the name known) pointing at a file of the SSH
    user. A temp is removed, then created exclusively: the upload lands and the
    victim stays as it was, also when the link comes back between the two."""
    setup = _setup(site, receiver=False)
    transport, tree = _tree_site(setup)
    try:
        setup.target.chmod(0o755)
        assert tree.make_dirs([(b"shared", 0o777)]) == [None]
        shared = setup.target / "shared"
        victim = setup.target.parent / "victim"
        victim.write_text("precious\n")
        site.user.chown(victim)
        planted = TEMP_PREFIX + b"known"
        monkeypatch.setattr(sftp_site, "keyed_files_temp_name", lambda *_: planted)
        monkeypatch.setattr(temp_names, "random_tail", lambda *_: "known")
        local_user = OsUser.from_name("nobody")

        def plant(name: str) -> None:
            local_user.run(["ln", "-sfn", str(victim), str(shared / name)])

        plant(planted.decode())
        (small,) = _small_files(setup.source, 1)
        batch = [ship.BatchFile(b"shared/a", small.data, small.before)]
        assert tree.start_files(batch).finish() == [None]
        assert victim.read_text() == "precious\n"
        assert not (shared / "a").is_symlink() and (shared / "a").read_bytes() == small.data
        plant(planted.decode())
        local = os.fsencode(setup.source / "f000.conf")
        tree.put_file(b"shared/b", local, unchanged=ship.same_file)
        assert victim.read_text() == "precious\n"
        assert not (shared / "b").is_symlink() and (shared / "b").read_bytes() == small.data

        # The local user wins the race: the link is back right after the removal.
        remove = transport.remove_quietly

        def removed_then_planted(path: PurePosixPath | bytes) -> None:
            remove(path)
            plant(planted.decode())

        monkeypatch.setattr(transport, "remove_quietly", removed_then_planted)
        with pytest.raises(OSError):
            tree.put_file(b"shared/c", local, unchanged=ship.same_file)
        monkeypatch.undo()
        plant(".tmp.known")
        monkeypatch.setattr(temp_names, "random_tail", lambda *_: "known")
        with pytest.raises(OSError):
            transport.put_atomic(PurePosixPath(shared / "wal"), [b"segment"])
        assert victim.read_text() == "precious\n"
        assert not (shared / "c").exists() and not (shared / "wal").exists()
    finally:
        transport.close()


@pytest.mark.parametrize("receiver", [True, False], ids=["tree-receive", "sftp-only"])
@pytest.mark.parametrize("keep", [False, True], ids=["default", "keep_write_bits"])
def test_setuid_setgid_sticky_never_reach_the_site_and_write_bits_only_when_kept(
    site: Site, receiver: bool, keep: bool
) -> None:
    """Modes at the site, whichever way a path travels (a folder, a batched file, a
    large file over SFTP): never setuid, setgid or sticky on a file, never setuid or
    setgid on a folder; group and other write only with keep_write_bits = true.
    `verify` compares after the same masking and finds no drift."""
    extra = f"keep_write_bits = {'true' if keep else 'false'}"
    with _driven(site, receiver=receiver, extra=extra) as run:
        source, target = run.setup.source, run.setup.target
        modes = {
            "suid": 0o4755,
            "sgid-group-writable": 0o2775,
            "sticky-world-writable": 0o1666,
        }
        for name, mode in modes.items():
            (source / name).write_text(name)
            (source / name).chmod(mode)
        big = source / "big-suid"
        big.write_bytes(b"x" * (ship.BATCH_FILE_MAX + 1))
        big.chmod(0o4777)
        shared = source / "shared"
        shared.mkdir()
        shared.chmod(0o2777)
        tmp_like = source / "tmp-like"
        tmp_like.mkdir()
        tmp_like.chmod(0o1777)
        run.tracker.reconcile(time.time())
        wait_for(
            lambda: run.round() == 0 and not rows.pending_paths(run.catalog, CONNECTOR),
            20,
            "shipped",
        )
        got = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in target.iterdir()}
        write = 0o022 if keep else 0
        assert got == {
            "suid": 0o755,
            "sgid-group-writable": 0o755 | (0o020 & write),
            "sticky-world-writable": 0o644 | (0o022 & write),
            "big-suid": 0o755 | write,
            "shared": 0o755 | write,
            "tmp-like": 0o1755 | write,
        }
        if receiver:
            report = run_verify(run.setup.config, CONNECTOR, run.catalog, time.time)
            assert report.clean, [d.describe() for d in report.differences]


def test_folders_inside_a_folder_still_a_link_at_the_site_wait_without_failing(
    site: Site,
) -> None:
    """`x` was shipped as a link; at the source it is now a folder holding x/a/b/f,
    and only x/a has settled. Nothing below x is tried at the site (no error, no
    attempt counted) until x itself lands as a folder."""
    with _driven(site, receiver=False) as run:
        source, target = run.setup.source, run.setup.target
        outside = _victim(site, run.setup)
        os.symlink(outside, source / "x")
        run.tracker.reconcile(time.time())
        assert run.round() == 1
        (source / "x").unlink()
        (source / "x" / "a" / "b").mkdir(parents=True)
        (source / "x" / "a" / "b" / "f").write_text("f\n")
        run.settled(b"x/a", deep=True)
        run.round()
        found = rows.all_rows(run.catalog, CONNECTOR)
        for path in (b"x/a", b"x/a/b", b"x/a/b/f"):
            assert found[path].state == rows.PENDING, path
            assert (found[path].attempts, found[path].error) == (0, None), path
        assert sorted(os.listdir(outside)) == ["authorized_keys"]
        run.settled(b"x", deep=True)
        wait_for(
            lambda: run.round() == 0 and not rows.pending_paths(run.catalog, CONNECTOR),
            20,
            "x/ shipped",
        )
        assert (target / "x" / "a" / "b" / "f").read_text() == "f\n"
