"""The files connector's mirror vs `rsync -a` over SSH, on a tree of small files.

Usage: python bench/files_vs_rsync.py [--files 10000] [--runs 3] [--changes 10]

One generated tree (a few hundred folders, files of 100 B to 20 KB, some
executables), one private sshd on loopback standing in for the DR site. Each
round copies the tree into an empty folder at the site with every variant, in
an order that rotates from round to round: `rsync -a --delete` (the baseline),
`rsync -a --delete --fsync` (a durable baseline) and the logship daemon
(`logship run` with one files connector, timed from its start until the catalog
has nothing pending and the site's tree is complete). With the daemon still
running, `--changes` single-file edits are then timed until each new content is
at the site. See bench/README.md for what each figure means. JSON lines on
stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import common
from common import Report, log, median

from logship.demo_sandbox import OsUser, SshServer
from logship.engines.files.names import is_temp_name

BENCH = "files_vs_rsync"
TARGET_RATIO = 1.5  # the target: initial sync at most 1.5x `rsync -a`
TARGET_CHANGE_S = 2.0  # the target: one changed file at the site within 2 s
CONNECTOR = "bench-files"
SETTLE = 0.5  # the connector's default
POLL = 0.05
#: the last batches land about 15 ms apart: polled this often once few rows are left
POLL_CLOSE = 0.01
CLOSE_ROWS = 1000


@dataclass(frozen=True)
class Tree:
    files: int
    folders: int
    executables: int
    total_bytes: int
    paths: list[Path]  # the regular files, for the change test


@dataclass(frozen=True)
class SyncRun:
    seconds: float
    cpu_seconds: float | None  # client side: the command and its children


# -- the tree ------------------------------------------------------------------------


def build_tree(source: Path, files: int, seed: int = 20) -> Tree:
    """A deterministic application-like tree: nested folders, small text-ish files.

    Folders: about one per 30 files, one to four levels deep. Sizes log-uniform
    between 100 B and 20 KB (most files are small, a few are not), content half
    repeated text and half random bytes, so it compresses somewhat, like configs
    and scripts. One file in twenty is executable (0755), the rest 0644.
    """
    rng = random.Random(seed)
    source.mkdir(mode=0o755)
    folders: list[Path] = [source]
    for n in range(max(1, files // 30)):
        parent = rng.choice(folders[: 1 + len(folders) // 2]) if n else source
        if len(parent.relative_to(source).parts) >= 4:
            parent = source
        folder = parent / f"dir{n:04d}"
        folder.mkdir(mode=0o755)
        folders.append(folder)
    words = b"config value server port 8080 path /opt/app script echo run start stop "
    paths: list[Path] = []
    total = executables = 0
    for n in range(files):
        size = round(100 * (200 ** rng.random()))  # 100 B .. 20 KB
        half = size // 2
        body = (words * (half // len(words) + 1))[:half] + rng.randbytes(size - half)
        path = rng.choice(folders) / f"file{n:05d}.{rng.choice(('conf', 'sh', 'py', 'txt'))}"
        path.write_bytes(body)
        if rng.random() < 0.05:
            path.chmod(0o755)
            executables += 1
        else:
            path.chmod(0o644)
        total += size
        paths.append(path)
    # mtimes in the past, as a deployed tree has: what `rsync -a` and logship copy.
    past = time.time() - 86400
    for path in paths:
        os.utime(path, (past, past))
    for folder in reversed(folders):
        os.utime(folder, (past, past))
    return Tree(files, len(folders) - 1, executables, total, paths)


def snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Every path below `root`: type, mode, size, mtime (s), sha256; temps flagged."""
    found: dict[bytes, tuple[object, ...]] = {}
    top = os.fsencode(root)
    for folder, dirs, names in os.walk(top):
        for name in dirs + names:
            full = os.path.join(folder, name)
            rel = full[len(top) + 1 :]
            if is_temp_name(rel):
                found[rel] = ("temp",)
                continue
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                mode = stat.S_IMODE(st.st_mode)
                found[rel] = ("file", mode, st.st_size, int(st.st_mtime), digest)
    return found


def check_copy(source: Path, target: Path, what: str) -> None:
    want, got = snapshot(source), snapshot(target)
    if want != got:
        wrong = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise RuntimeError(f"{what}: {len(wrong)} paths differ from the source, e.g. {wrong[:5]}")


def count_entries(root: Path) -> int:
    """Names below `root` (files and folders), temps not counted."""
    if not root.is_dir():
        return 0
    count = 0
    for _, dirs, names in os.walk(os.fsencode(root)):
        count += len(dirs) + sum(1 for name in names if not is_temp_name(name))
    return count


def fresh_dir(path: Path, user: OsUser) -> Path:
    """`path` empty and owned by `user`, everything before flushed to disk."""
    shutil.rmtree(path, ignore_errors=True)
    common.private_dir(path, user)
    path.chmod(0o755)
    common.settle_disk()
    return path


# -- rsync ---------------------------------------------------------------------------


def rsync_supports_fsync() -> bool:
    out = subprocess.run(["rsync", "--help"], capture_output=True, text=True, check=False)
    return "--fsync" in out.stdout


def rsync_copy(server: SshServer, user: OsUser, source: Path, target: Path, fsync: bool) -> float:
    ssh = shlex.join(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(server.client_key),
            "-o",
            f"UserKnownHostsFile={server.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(server.port),
        ]
    )
    cmd = [
        *user.command_prefix(),
        "rsync",
        "-a",
        "--delete",
        *(["--fsync"] if fsync else []),
        "-e",
        ssh,
        f"{source}/",
        f"{user.name}@{server.host}:{target}/",
    ]
    return common.run_timed(cmd, timeout=1800)


# -- logship -------------------------------------------------------------------------


def write_config(directory: Path, server: SshServer, source: Path, target: Path) -> Path:
    (directory / "connectors").mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    (directory / "connectors").chmod(0o755)
    config = directory / "logship.toml"
    config.write_text(
        common.main_config_text(
            directory / "state", server, directory / "incoming", site_config=config
        )
    )
    (directory / "connectors" / f"{CONNECTOR}.toml").write_text(
        f"""kind = "files"
site = "dr"
rpo = "60s"
source = "{source}"
settle = "{SETTLE}s"

[standby]
target = "{target}"
"""
    )
    for path in directory.rglob("*.toml"):
        path.chmod(0o644)
    return config


def pending(catalog: Path) -> tuple[int, int] | None:
    """(rows, rows not yet durable at the site) of the connector; None before the catalog."""
    if not catalog.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1)
        try:
            found = db.execute(
                "select count(*), coalesce(sum(state in ('pending', 'deleting')), 0) "
                "from tree_files where connector = ?",
                (CONNECTOR,),
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None  # not created yet, or busy: ask again
    return int(found[0]), int(found[1])


class Daemon:
    """`logship run` as the bench user, with its own state folder and log."""

    def __init__(self, config: Path, user: OsUser, env: dict[str, str], log_path: Path) -> None:
        self.config = config
        self.catalog = config.parent / "state" / "catalog.db"
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed in stop()
        run = [sys.executable, "-m", "logship", "--config", str(config), "run"]
        self.proc = subprocess.Popen(
            [*user.command_prefix(), *run],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_converged(daemon: Daemon, target: Path, entries: int, timeout: float) -> float:
    """Seconds from now until the catalog says every path is durable at the site,
    and the site's tree then holds every path.

    The catalog (read-only, as `status` reads it) is asked every POLL, every
    POLL_CLOSE once fewer than CLOSE_ROWS are left; the site's tree is walked
    only once the catalog says everything is shipped, so the poller does not
    compete with the daemon for CPU while it works. The time is taken when the
    catalog said so: the walk that confirms it (8-30 ms for 10,000 paths)
    is the bench's, as the check of every copy after its run is, rsync's too.
    """
    start = time.perf_counter()
    while True:
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"logship run exited {daemon.proc.returncode}")
        state = pending(daemon.catalog)
        if state is not None and state[0] >= entries and state[1] == 0:
            claimed = time.perf_counter()
            if count_entries(target) == entries:
                return claimed - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"no convergence after {timeout:.0f}s (catalog: {state})")
        close = state is not None and state[0] >= entries and state[1] < CLOSE_ROWS
        time.sleep(POLL_CLOSE if close else POLL)


def change_latencies(
    tree: Tree, source: Path, target: Path, changes: int, seed: int
) -> list[float]:
    """Rewrite one file at a time; seconds until its new content is at the site."""
    rng = random.Random(seed)
    latencies = []
    for _ in range(changes):
        path = rng.choice(tree.paths)
        rel = path.relative_to(source)
        body = rng.randbytes(rng.randint(100, 20_000))
        want = hashlib.sha256(body).digest()
        path.write_bytes(body)  # in place, as an editor or a deploy tool would
        start = time.perf_counter()
        remote = target / rel
        while True:
            try:
                if hashlib.sha256(remote.read_bytes()).digest() == want:
                    break
            except FileNotFoundError:
                pass
            if time.perf_counter() - start > 60:
                raise TimeoutError(f"{rel} did not reach the site within 60 s")
            time.sleep(0.01)
        latencies.append(time.perf_counter() - start)
        log(f"  change {rel}: {latencies[-1]:.3f}s")
        time.sleep(0.5)  # let the daemon go idle, as between real edits
    return latencies


# -- the rounds ----------------------------------------------------------------------


@dataclass
class Results:
    sync: dict[str, list[float]]
    changes: list[float]


def rounds(
    server: SshServer,
    root: Path,
    user: OsUser,
    tree: Tree,
    source: Path,
    args: argparse.Namespace,
    variants: tuple[str, ...],
) -> Results:
    site = common.private_dir(root / "site", user)
    site.chmod(0o755)
    conf_dir = root / "config"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # Bytecode compiled once, as in a pip install (the warm-up round fills it).
    env["PYTHONPYCACHEPREFIX"] = str(common.private_dir(root / "pycache", user))
    entries = tree.files + tree.folders
    results = Results({name: [] for name in variants}, [])

    def logship_round(timed_no: int) -> float:
        target = site / "logship"
        shutil.rmtree(target, ignore_errors=True)  # the mirror creates its root
        shutil.rmtree(conf_dir, ignore_errors=True)
        config = write_config(conf_dir, server, source, target)
        common.private_dir(conf_dir / "state", user)
        common.private_dir(conf_dir / "incoming", user)
        common.settle_disk()
        daemon = Daemon(config, user, env, root / "logship-run.log")
        try:
            seconds = wait_converged(daemon, target, entries, timeout=1800)
            check_copy(source, target, "logship")
            if timed_no > 0 and args.changes:
                results.changes.extend(
                    change_latencies(tree, source, target, args.changes, seed=timed_no)
                )
        finally:
            daemon.stop()
        return seconds

    def rsync_round(fsync: bool) -> float:
        target = fresh_dir(site / "rsync", user)
        seconds = rsync_copy(server, user, source, target, fsync)
        check_copy(source, target, "rsync")
        return seconds

    runners: dict[str, Callable[[int], float]] = {
        "rsync": lambda _n: rsync_round(False),
        "rsync-fsync": lambda _n: rsync_round(True),
        "logship": logship_round,
    }
    for round_no in range(args.warmup + args.runs):
        shift = round_no % len(variants)
        timed_no = round_no - args.warmup + 1
        label = f"round {timed_no}/{args.runs}" if timed_no > 0 else "warm-up"
        for name in variants[shift:] + variants[:shift]:
            seconds = runners[name](timed_no)
            log(f"{label} {name}: {seconds:.2f}s ({tree.files / seconds:,.0f} files/s)")
            if timed_no > 0:
                results.sync[name].append(seconds)
    return results


# -- the report ----------------------------------------------------------------------


def report_results(report: Report, results: Results, tree: Tree) -> None:
    about = (
        f"{tree.files} files ({tree.executables} executable) in {tree.folders} folders, "
        f"{tree.total_bytes / 1024 / 1024:.1f} MiB"
    )

    def spread(name: str) -> str:
        runs = results.sync[name]
        return f"runs {min(runs):.2f}-{max(runs):.2f}s"

    plain = report.add(
        "rsync_initial_sync",
        median(results.sync["rsync"]),
        "s",
        detail=f"rsync -a --delete over ssh (default cipher), no fsync; {about}; {spread('rsync')}",
        runs=results.sync["rsync"],
    )
    durable = None
    if "rsync-fsync" in results.sync:
        durable = report.add(
            "rsync_fsync_initial_sync",
            median(results.sync["rsync-fsync"]),
            "s",
            baseline=plain,
            detail=f"the same with --fsync (each file fsynced); {spread('rsync-fsync')}",
            runs=results.sync["rsync-fsync"],
        )
    value = median(results.sync["logship"])
    verdict = "met" if value / plain.value <= TARGET_RATIO else "NOT met"
    versus = f"; {value / durable.value:.2f}x rsync --fsync" if durable else ""
    report.add(
        "logship_initial_sync",
        value,
        "s",
        baseline=plain,
        detail=(
            f"logship run, daemon start until nothing pending and the site complete; "
            f"target <= {TARGET_RATIO}x: {verdict}{versus}; {spread('logship')}"
        ),
        runs=results.sync["logship"],
    )
    for name in results.sync:
        rates = [tree.files / s for s in results.sync[name]]
        report.add(
            f"{name.replace('-', '_')}_files_per_s",
            median(rates),
            "files/s",
            detail="files / wall time of the initial sync",
            runs=rates,
        )
    if results.changes:
        worst = max(results.changes)
        verdict = "met" if worst <= TARGET_CHANGE_S else "NOT met"
        report.add(
            "logship_change_latency_median",
            median(results.changes),
            "s",
            detail=(
                f"one file rewritten in the converged {tree.files}-file tree until its new "
                f"sha256 is at the site; settle {SETTLE}s; {len(results.changes)} changes"
            ),
            runs=results.changes,
        )
        report.add(
            "logship_change_latency_max",
            worst,
            "s",
            detail=f"the slowest of those changes; target <= {TARGET_CHANGE_S}s: {verdict}",
        )


# -- main ----------------------------------------------------------------------------


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds; median reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument(
        "--changes", type=int, default=10, help="single-file changes timed per round"
    )
    args = parser.parse_args(argv)
    if args.files < 30 or args.runs < 1 or args.warmup < 0 or args.changes < 0:
        parser.error("--files at least 30, --runs at least 1, --warmup/--changes at least 0")
    if shutil.which("rsync") is None:
        parser.error("rsync is not installed (e.g. apt-get install rsync)")
    signal.signal(signal.SIGTERM, _stop)

    env = common.environment()
    env["rsync"] = common._command_output(["rsync", "--version"])
    report = Report(BENCH, env)
    user = common.bench_user()
    variants: tuple[str, ...] = ("rsync", "logship")
    if rsync_supports_fsync():
        variants = ("rsync", "rsync-fsync", "logship")
    else:
        log("this rsync has no --fsync (3.2.4+): no durable rsync figure")
    with common.reachable_tempdir() as root:
        source = root / "source"
        started = time.monotonic()
        tree = build_tree(source, args.files)
        os.sync()
        log(
            f"tree: {tree.files} files, {tree.folders} folders, "
            f"{tree.total_bytes / 1024 / 1024:.1f} MiB in {time.monotonic() - started:.1f}s"
        )
        with (
            common.ssh_server(root / "sshd", user) as server,
            common.site_filesystem(root / "site") as site_fs,
        ):
            log(f"site: {site_fs}")
            report.env["site_filesystem"] = site_fs
            results = rounds(server, root, user, tree, source, args, variants)
        report_results(report, results, tree)
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
