"""logship's SFTP shipping vs OpenSSH `sftp`, and `archive-wal` vs a durable `dd`.

Usage: python bench/throughput_vs_sftp.py [--files 64] [--repeat 5]

Everything runs on loopback against a private sshd; see bench/README.md for what
each figure means. JSON lines on stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event, Semaphore
from pathlib import Path
from types import FrameType
from typing import Any, Self

import common
from common import MIB, Figure, Report, log, mean, median, p95

from logship.config.model import SiteConfig
from logship.demo_sandbox import OsUser, SshServer
from logship.durable import read_chunks
from logship.manifest import SiteLayout
from logship.ship.gated import GatedTransport
from logship.ship.sftp import SftpTransport
from logship.ship.sftp_replies import RemoteUpload
from logship.ship.shipper import ship_file
from logship.spool import entry_for

BENCH = "throughput_vs_sftp"
AES_GCM = "aes128-gcm@openssh.com"
CONNECTOR = "bench"


@dataclass
class Run:
    seconds: float
    stored_bytes: int = 0
    cipher: str = ""
    #: the whole machine's CPU in the timed window (both ends, on loopback)
    busy_cpu_s: float = 0.0
    idle_cpu_s: float = 0.0

    @classmethod
    def of(cls, timed: common.Timed, stored_bytes: int = 0, cipher: str = "", **more: Any) -> Self:
        """A run timed by `timed` (a Window, or another run), with what else it measured."""
        return cls(timed.seconds, stored_bytes, cipher, timed.busy_cpu_s, timed.idle_cpu_s, **more)


# -- OpenSSH sftp --------------------------------------------------------------------


def _quoted(path: Path) -> str:
    text = str(path)
    if '"' in text or "\n" in text:
        raise ValueError(f"cannot quote {text!r} in an sftp batch file")
    return f'"{text}"'


def sftp_put_all(
    server: SshServer,
    files: list[Path],
    remote_dir: Path,
    batch: Path,
    cipher: str | None,
    fsync: bool = False,
) -> Run:
    """One `sftp -b` process putting every file: a plain put (no fsync, no rename),
    or with `fsync` `put -f` (fsync@openssh.com of each file, still no rename)."""
    put = "put -f" if fsync else "put"
    batch.write_text("".join(f"{put} {_quoted(f)} {_quoted(remote_dir / f.name)}\n" for f in files))
    cmd = [
        "sftp",
        "-F",
        "/dev/null",  # no user or system ssh_config: OpenSSH defaults only
        "-b",
        str(batch),
        *common.ssh_client_options(server),
        "-P",
        str(server.port),
        "-v",  # debug1 names the negotiated cipher; a few lines at connect time only
        *(["-c", cipher] if cipher else []),
        f"{server.login_user.name}@{server.host}",
    ]
    watch = common.Stopwatch()
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900, check=False
    )
    window = watch.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"sftp exited {proc.returncode}: {proc.stderr[-2000:]}")
    found = re.search(r"kex: client->server cipher: (\S+)", proc.stderr)
    return Run.of(window, cipher=found.group(1) if found else (cipher or "default"))


# -- logship -------------------------------------------------------------------------


def logship_ship_all(site: SiteConfig, files: list[Path], compression: str) -> Run:
    """One SftpTransport (connection set-up included), `ship_file` for each file;
    a GatedTransport (site-receive through site-gate) for a restricted site."""
    watch = common.Stopwatch()
    transport = GatedTransport(site) if site.restricted else SftpTransport(site)
    try:
        layout = SiteLayout.for_connector(site.root, f"{CONNECTOR}-{compression}")
        transport.makedirs(layout.wal_dir)
        transport.makedirs(layout.manifest_dir)
        stored = 0
        for path in files:
            entry = entry_for(CONNECTOR, path)
            if entry is None:
                raise RuntimeError(f"{path} vanished")
            stored += ship_file(transport, layout, entry, compression, time.time).stored_size
        ssh = transport._client.get_transport()  # private, only to name the cipher
        cipher = getattr(ssh, "local_cipher", "") if ssh is not None else ""
    finally:
        transport.close()
    return Run.of(watch.stop(), stored_bytes=stored, cipher=cipher)


def paramiko_put_all(
    site: SiteConfig, files: list[Path], remote_dir: Path, processes: int, fsync: bool
) -> Run:
    """For reference, the transport alone: `processes` forked processes, each one
    tuned SFTP connection writing its share of the files with logship's pipelined
    writes and none of its safety: no hash, no temp name, rename or record. With
    `fsync` each file is fsynced, as `put -f` does; without, nothing is, as with a
    plain `put`. The clock starts once every connection is up."""
    context = multiprocessing.get_context("fork")
    ready = context.Semaphore(0)
    go = context.Event()
    children = [
        context.Process(
            target=_put_share, args=(site, files[i::processes], remote_dir, fsync, ready, go)
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()
    try:
        for _ in children:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a paramiko process did not connect within 60 s")
        watch = common.Stopwatch()
        go.set()
        for child in children:
            child.join(900)
        window = watch.stop()
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
    if failed := [child.exitcode for child in children if child.exitcode != 0]:
        raise RuntimeError(f"paramiko upload processes exited {failed}")
    return Run.of(window, cipher=f"{processes} processes")


def _put_share(
    site: SiteConfig,
    files: list[Path],
    remote_dir: Path,
    fsync: bool,
    ready: Semaphore,
    go: Event,
) -> None:
    transport = SftpTransport(site)
    try:
        ready.release()
        go.wait()
        for path in files:
            with RemoteUpload(transport.sftp, str(remote_dir / path.name)) as upload:
                upload.write_all(read_chunks(path))
                if fsync:
                    upload.finish()
    finally:
        transport.close()


def logship_daemon_all(
    server: SshServer,
    files: list[Path],
    workdir: Path,
    incoming: Path,
    compression: str,
    connections: int,
    address: tuple[str, int] | None = None,
    feed: Callable[[Path, Path], None] = os.rename,
    primary: str = "",
    user: OsUser | None = None,
) -> Run:
    """`logship run` as in production: the files are renamed into its spool at once
    (as archive-wal leaves them) and timed until the daemon logged each one shipped,
    so the watcher, the catalog and the site worker's connections are all in it.
    The clock starts once the daemon and its lanes are connected, as they are in a
    daemon that has been running (each lane is a process start and an SSH login).

    `feed(staged, in_spool)` is how each file enters the spool, in order, with the
    clock running: by default a rename from a staging folder on the same file system.
    `primary` adds lines to the connector's `[primary]` (read-ahead's `data_dir`, say);
    with `user` the daemon runs as that user (who must read that `pg_wal`), as it
    does in production, and owns everything under `workdir`.
    """
    if workdir.exists():
        subprocess.run(["rm", "-rf", str(workdir)], check=True)
    stage = workdir / "stage"
    stage.mkdir(parents=True)
    (workdir / "connectors").mkdir()
    for path in files:
        os.link(path, stage / path.name)  # same file system: the rename below is instant
    config = workdir / "logship.toml"
    text = common.main_config_text(workdir / "state", server, incoming, address=address)
    # No standby to ask and no spool rescans while timing; the lanes under test.
    text = text.replace(
        "[sites.dr]\n", 'lag_sample_interval = "1h"\nreconcile_interval = "1h"\n\n[sites.dr]\n'
    )
    config.write_text(text + f"connections = {connections}\n")
    (workdir / "connectors" / f"{CONNECTOR}.toml").write_text(
        f"""kind = "postgresql"
site = "dr"
rpo = "60s"
compression = "{compression}"
heartbeat = false
keep_shipped_mib = 0

[primary]
dsn = "host=/nonexistent port=5432 dbname=postgres"
{primary}
[standby]
dsn = "host=/nonexistent port=5433 dbname=postgres"
data_dir = "/nonexistent"
"""
    )
    spool = workdir / "state" / "spool" / CONNECTOR
    spool.mkdir(parents=True, mode=0o700)
    log_path = workdir / "daemon.log"
    if user is not None:
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(workdir)], check=True)

    def events(name: str) -> list[dict[str, object]]:
        lines = log_path.read_text().splitlines()
        return [e for e in map(_json_or_none, lines) if e and e.get("event") == name]

    with open(log_path, "wb") as out:
        daemon = subprocess.Popen(
            [
                *(user.command_prefix() if user is not None else []),
                *[sys.executable, "-m", "logship", "--config", str(config), "run"],
            ],
            stdout=out,
            stderr=out,
            cwd=workdir,
        )
    try:
        common.wait_until(lambda: bool(events("connected")), 60, "the daemon connected")
        common.wait_until(
            lambda: len(events("lane connected")) >= connections - 1, 60, "its lanes connected"
        )
        watch = common.Stopwatch()
        for path in files:
            feed(stage / path.name, spool / path.name)
        deadline = time.monotonic() + 600
        while len(shipped := events("shipped")) < len(files):
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited {daemon.returncode}: see {log_path}")
            if time.monotonic() > deadline:
                # An archiver that cannot write into the spool never brings the rest.
                raise TimeoutError(f"not every file shipped within 600 s: see {log_path}")
            time.sleep(0.01)
        window = watch.stop()
    finally:
        daemon.terminate()
        daemon.wait(60)
    stored = sum(int(str(e["stored_bytes"])) for e in shipped)
    return Run.of(window, stored_bytes=stored, cipher=f"{connections} connection(s)")


def _json_or_none(line: str) -> dict[str, object] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- archive-wal ---------------------------------------------------------------------


def write_archive_config(directory: Path, server: SshServer, incoming: Path) -> Path:
    """A config like a real primary's: archive-wal reads only the spool location."""
    (directory / "connectors").mkdir(parents=True)
    config = directory / "logship.toml"
    config.write_text(common.main_config_text(directory / "state", server, incoming))
    (directory / "connectors" / f"{CONNECTOR}.toml").write_text(
        """kind = "postgresql"
site = "dr"
rpo = "60s"
compression = "zstd"

[primary]
dsn = "host=/var/run/postgresql port=5432 dbname=postgres"

[standby]
dsn = "host=/var/run/postgresql port=5433 dbname=postgres"
data_dir = "/var/lib/postgresql/15/standby"
"""
    )
    return config


def restricted_site(server: SshServer, directory: Path, incoming: Path) -> SiteConfig:
    """The site reached with a second key whose forced command is `site-gate`,
    with a site config of its own that names the bench's connectors."""
    (directory / "connectors").mkdir(parents=True)
    config = directory / "logship.toml"
    config.write_text(common.main_config_text(directory / "state", server, incoming))
    for compression in ("none", "zstd"):
        (directory / "connectors" / f"{CONNECTOR}-{compression}.toml").write_text(
            f"""kind = "postgresql"
site = "dr"
rpo = "60s"
compression = "{compression}"

[primary]
dsn = "host=/var/run/postgresql port=5432 dbname=postgres"

[standby]
dsn = "host=/var/run/postgresql port=5433 dbname=postgres"
data_dir = "/var/lib/postgresql/15/standby"
"""
        )
    for path in (directory, directory / "connectors"):
        path.chmod(0o755)
    script = str(Path(sys.executable).parent / "logship")
    gate = shlex.join([script, "--config", str(config), "site-gate", "--site", "dr"])
    key = server.add_restricted_key(gate)
    site = common.site_for(server, incoming, name="dr")
    return site.model_copy(update={"identity_file": key, "restricted": True})


def archive_latencies(
    files: list[Path], workdir: Path, server: SshServer, incoming: Path
) -> dict[str, list[float]]:
    """Per-segment wall times: logship archive-wal, dd conv=fsync, python -c pass.

    The three run interleaved, segment by segment, so drift hits all alike.
    """
    config = write_archive_config(workdir / "config", server, incoming)
    dd_dir = workdir / "dd"
    dd_dir.mkdir()
    spool = workdir / "config" / "state" / "spool" / CONNECTOR
    python = sys.executable
    archive = [python, "-m", "logship", "--config", str(config), "archive-wal", CONNECTOR]

    def dd(src: Path) -> list[str]:
        return ["dd", f"if={src}", f"of={dd_dir / src.name}", "bs=1M", "conv=fsync", "status=none"]

    # As installed by pip, logship's bytecode is compiled once, not at every call;
    # the dev environment may set PYTHONDONTWRITEBYTECODE, so give the children a
    # private bytecode cache that the warm-up round fills.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    commands: dict[str, Callable[[Path], list[str]]] = {
        "archive-wal": lambda src: [*archive, str(src)],
        "dd": dd,
        "python": lambda src: [python, "-c", "pass"],
    }
    # One untimed round warms the page cache for the interpreter and its modules.
    for build in commands.values():
        common.run_timed(build(files[0]), env=env)
    (spool / files[0].name).unlink()
    common.empty_dir(dd_dir)

    times: dict[str, list[float]] = {name: [] for name in commands}
    for src in files:
        for name, build in commands.items():
            times[name].append(common.run_timed(build(src), env=env))
    if sorted(p.name for p in spool.iterdir() if not p.name.startswith(".")) != sorted(
        f.name for f in files
    ):
        raise RuntimeError(f"archive-wal did not leave every segment in {spool}")
    return times


# -- transfers ---------------------------------------------------------------------

#: `logship run` end to end, by compression and number of connections
DAEMON_VARIANTS = tuple(
    f"daemon-{compression}-c{n}" for compression in ("none", "zstd") for n in (1, 2, 4)
)


def transfer_runs(
    server: SshServer, files: list[Path], root: Path, incoming: Path, user: OsUser, repeat: int
) -> dict[str, list[Run]]:
    site = common.site_for(server, incoming)
    restricted = restricted_site(server, root / "restricted", incoming)
    batch = root / "batch.txt"
    remote = incoming / "sftp"
    runners: dict[str, Callable[[], Run]] = {
        "sftp": lambda: sftp_put_all(server, files, remote, batch, None),
        "sftp-aes128-gcm": lambda: sftp_put_all(server, files, remote, batch, AES_GCM),
        "sftp-aes128-gcm-fsync": lambda: sftp_put_all(
            server, files, remote, batch, AES_GCM, fsync=True
        ),
        "paramiko-p2": lambda: paramiko_put_all(site, files, remote, 2, fsync=False),
        "paramiko-fsync-p2": lambda: paramiko_put_all(site, files, remote, 2, fsync=True),
        "logship-none": lambda: logship_ship_all(site, files, "none"),
        "logship-zstd": lambda: logship_ship_all(site, files, "zstd"),
        "logship-restricted-none": lambda: logship_ship_all(restricted, files, "none"),
        "logship-restricted-zstd": lambda: logship_ship_all(restricted, files, "zstd"),
    }
    for name in DAEMON_VARIANTS:
        _, compression, count = name.split("-")
        runners[name] = lambda c=compression, n=int(count[1:]): logship_daemon_all(
            server, files, root / "daemon", incoming, c, n
        )
    runs: dict[str, list[Run]] = {name: [] for name in runners}
    mib = sum(f.stat().st_size for f in files) / MIB
    # Round 0 is a warm-up, not reported: the first writes to fresh disk blocks of
    # a VM and cold caches made it the slowest round by far. Then round-robin, so
    # that drift of the machine hits every variant alike.
    for round_no in range(repeat + 1):
        for name in runners:
            common.empty_dir(incoming)  # also syncs: no dirty pages from the last run
            common.private_dir(remote, user)
            run = runners[name]()
            label = f"round {round_no}/{repeat}" if round_no else "warm-up"
            log(
                f"{label} {name}: {run.seconds:.2f}s, {mib / run.seconds:.0f} MiB/s, "
                f"{run.busy_cpu_s / (mib / 1024):.2f} CPU-s/GiB"
            )
            if round_no:
                runs[name].append(run)
    common.empty_dir(incoming)
    return runs


def report_transfers(
    report: Report, runs: dict[str, list[Run]], raw_mib: float, source: str
) -> None:
    reported: list[tuple[str, str]] = []  # (variant, figure), for the CPU figures

    def rates_of(name: str) -> list[float]:
        return [raw_mib / r.seconds for r in runs[name]]

    def add(name: str, figure: str, baseline: Figure | None, detail: str) -> Figure:
        rates = rates_of(name)
        reported.append((name, figure))
        detail += f"; runs {min(rates):.0f}-{max(rates):.0f}"
        return report.add(
            figure, median(rates), "MiB/s", baseline=baseline, detail=detail, runs=rates
        )

    sftp_default = add(
        "sftp",
        "sftp_put_default_cipher",
        None,
        f"OpenSSH sftp -b, cipher {runs['sftp'][0].cipher}; plain put",
    )
    sftp_aes = add(
        "sftp-aes128-gcm",
        "sftp_put_aes128_gcm",
        sftp_default,
        "OpenSSH sftp -b -c aes128-gcm@openssh.com; plain put",
    )
    sftp_fsync = add(
        "sftp-aes128-gcm-fsync",
        "sftp_put_fsync_aes128_gcm",
        sftp_aes,
        "sftp -c aes128-gcm@openssh.com, put -f: fsync each file",
    )

    def against_fsync(name: str) -> str:
        return f"{median(rates_of(name)) / sftp_fsync.value:.2f}x sftp put -f"

    for name, what in (
        ("paramiko-p2", "nothing fsynced, as a plain put"),
        ("paramiko-fsync-p2", "each file fsynced, as put -f"),
    ):
        add(
            name,
            name.replace("-", "_"),
            sftp_aes,
            f"reference: 2 processes, logship's SFTP writes alone (no hash, no temp name, "
            f"rename or record); {what}; {against_fsync(name)}",
        )
    for name, label in (("logship-none", "none"), ("logship-zstd", "zstd")):
        add(
            name,
            f"logship_ship_{label}",
            sftp_aes,
            f"1 connection, cipher {runs[name][0].cipher}; raw MiB/s; temp, fsync, rename, "
            f"dir fsync, manifest record; {against_fsync(name)}",
        )
    for name in DAEMON_VARIANTS:
        _, compression, count = name.split("-")
        add(
            name,
            f"logship_run_{compression}_{count}",
            sftp_aes,
            f"logship run, {count[1:]} connection(s), {compression}: renamed into the "
            "spool until logged shipped",
        )
    for label in ("none", "zstd"):
        name, plain = f"logship-restricted-{label}", rates_of(f"logship-{label}")
        ratio = median(rates_of(name)) / median(plain)
        add(
            name,
            f"logship_ship_restricted_{label}",
            sftp_aes,
            f"as logship_ship_{label}, through a restricted key (site-gate, site-receive: "
            f"exclusive temp, fsync, sha256 check, link, dir fsync); {ratio:.2f}x "
            f"logship_ship_{label}",
        )
    stored = runs["logship-zstd"][0].stored_bytes
    report.add(
        "zstd_compression_ratio",
        raw_mib * MIB / stored,
        "x",
        detail=f"zstd level 1 on {source.split(':')[0]}",
    )
    for name, figure in reported:
        common.add_cpu_figure(report, figure, runs[name], round(raw_mib * MIB))


def report_archive(report: Report, times: dict[str, list[float]]) -> None:
    ms = {name: [t * 1000 for t in values] for name, values in times.items()}
    calls = len(ms["archive-wal"])
    floor_mean = report.add(
        "python_startup_mean",
        mean(ms["python"]),
        "ms",
        detail=f"{sys.executable} -c pass; {calls} calls (the floor of any Python hook)",
    )
    floor_p95 = report.add("python_startup_p95", p95(ms["python"]), "ms")
    dd_mean = report.add(
        "dd_fsync_mean",
        mean(ms["dd"]),
        "ms",
        detail="dd bs=1M conv=fsync per segment: durable data, no temp/rename/dir fsync",
    )
    dd_p95 = report.add("dd_fsync_p95", p95(ms["dd"]), "ms")
    report.add(
        "archive_wal_mean",
        mean(ms["archive-wal"]),
        "ms",
        baseline=dd_mean,
        detail=(
            f"logship archive-wal, one process per segment, {calls} calls; "
            f"{mean(ms['archive-wal']) - floor_mean.value:.1f} ms above python -c pass"
        ),
    )
    report.add("archive_wal_p95", p95(ms["archive-wal"]), "ms", baseline=dd_p95)
    report.add(
        "archive_wal_vs_python_floor",
        mean(ms["archive-wal"]),
        "ms",
        baseline=floor_mean,
        detail=f"mean over python -c pass mean (p95 floor {floor_p95.value:.1f} ms)",
    )
    dd_rate = report.add("dd_fsync_rate", 1000 / mean(ms["dd"]), "segments/s")
    report.add(
        "archive_wal_rate",
        1000 / mean(ms["archive-wal"]),
        "segments/s",
        baseline=dd_rate,
        detail="serial, like PostgreSQL's archiver: 1 / mean wall time",
    )


# -- main ----------------------------------------------------------------------------


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=64, help="16 MiB segments (default 64)")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per transfer variant; median reported"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="skip PostgreSQL; use WAL-like synthetic data"
    )
    args = parser.parse_args(argv)
    if args.files < 1 or args.repeat < 1:
        parser.error("--files and --repeat must be at least 1")
    signal.signal(signal.SIGTERM, _stop)

    report = Report(BENCH, common.environment())
    with common.ship_setup(args.files, synthetic=args.synthetic) as bench:
        files, server, incoming = bench.wal.files, bench.server, bench.incoming
        runs = transfer_runs(server, files, bench.root, incoming, bench.user, args.repeat)
        report_transfers(report, runs, bench.raw_mib, bench.wal.source)
        log(f"archive-wal: {len(files)} calls, each a new process")
        times = archive_latencies(files, bench.root / "archive", server, incoming)
        report_archive(report, times)
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
