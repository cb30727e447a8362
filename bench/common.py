"""Helpers shared by the benchmark scripts in bench/ (a plain folder, not a package).

The scripts are run as ``python bench/<name>.py``; Python puts bench/ first on
sys.path, so they import this module as ``common`` (and, after it, the test kit).

Every figure is printed at once as one JSON line on stdout::

    {"bench": ..., "figure": ..., "value": ..., "unit": ..., "baseline": ..., "ratio": ...}

``baseline`` is the value of the figure it is compared with (named in
``baseline_figure``) and ``ratio`` is ``value / baseline``, so for a time a ratio
above 1 means slower and for a rate it means faster. A human table goes to
stderr at the end, so stdout stays machine-readable.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from logship.config.model import SiteConfig
from logship.demo_sandbox import OsUser, PgCluster, SshServer, free_port

#: the checkout: the scripts, run with bench/ first on sys.path, find the test kit
#: (testkit/, which is not installed) here; appended, so the installed logship wins
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))

MIB = 1024 * 1024
SEGMENT_SIZE = 16 * MIB
PG_BIN = Path("/usr/lib/postgresql/15/bin")
_WAL_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


# -- the machine ---------------------------------------------------------------------


def _command_output(cmd: Sequence[str], *, stderr: bool = False) -> str:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    out = proc.stderr if stderr else proc.stdout
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except (ImportError, AttributeError):
        return "not installed"


def environment() -> dict[str, Any]:
    """Where and with what a benchmark ran: recorded next to every figure."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "uname": _command_output(["uname", "-srm"]),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "paramiko": _version("paramiko"),
        "zstandard": _version("zstandard"),
        "openssh": _command_output(["ssh", "-V"], stderr=True),
        "postgresql": _command_output([str(PG_BIN / "postgres"), "--version"]),
        # Other work on the machine skews every figure: note how busy it was.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


# -- statistics ----------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


# -- reporting -----------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    bench: str
    figure: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    baseline_figure: str | None = None
    detail: str = ""
    runs: list[float] = field(default_factory=list)


class Report:
    """Collects figures, prints each as a JSON line now and all as a table at the end."""

    def __init__(self, bench: str, env: dict[str, Any], out: TextIO = sys.stdout) -> None:
        self.bench = bench
        self.env = env
        self.out = out
        self.figures: list[Figure] = []

    def add(
        self,
        name: str,
        value: float,
        unit: str,
        *,
        baseline: Figure | None = None,
        detail: str = "",
        runs: Sequence[float] = (),
    ) -> Figure:
        ratio = None
        if baseline is not None and baseline.value:
            ratio = round(value / baseline.value, 3)
        figure = Figure(
            bench=self.bench,
            figure=name,
            value=round(value, 3),
            unit=unit,
            baseline=baseline.value if baseline is not None else None,
            ratio=ratio,
            baseline_figure=baseline.figure if baseline is not None else None,
            detail=detail,
            runs=[round(r, 3) for r in runs],
        )
        self.figures.append(figure)
        line = {k: v for k, v in asdict(figure).items() if v not in ("", [])}
        line["env"] = self.env
        print(json.dumps(line), file=self.out, flush=True)
        return figure

    def print_table(self, stream: TextIO = sys.stderr) -> None:
        from rich.console import Console
        from rich.table import Table

        env = self.env
        table = Table(
            title=f"{self.bench}  ({env['date']})",
            caption=(
                f"{env['uname']} | {env['cpu']} x{env['cores']} | Python {env['python']} | "
                f"paramiko {env['paramiko']} | {env['openssh']}"
            ),
        )
        for column, justify in (
            ("figure", "left"),
            ("value", "right"),
            ("unit", "left"),
            ("baseline", "left"),
            ("ratio", "right"),
            ("detail", "left"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for f in self.figures:
            baseline = f"{f.baseline_figure} ({f.baseline:,.1f})" if f.baseline_figure else ""
            ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
            table.add_row(f.figure, f"{f.value:,.1f}", f.unit, baseline, ratio, f.detail)
        Console(file=stream, width=160).print(table)


def log(message: str) -> None:
    """Progress on stderr, so that stdout carries only JSON lines."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- places and services -------------------------------------------------------------


def bench_user() -> OsUser:
    """The account sshd lets in and PostgreSQL runs as (``postgres`` when we are root)."""
    return OsUser.for_postgres()


@contextlib.contextmanager
def reachable_tempdir(prefix: str = "logship-bench-") -> Iterator[Path]:
    """A 0755 temp folder under /tmp that the bench user can enter; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def private_dir(path: Path, user: OsUser) -> Path:
    """A 0700 directory owned by ``user`` (what sshd's login user writes into)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    user.chown(path)
    return path


@contextlib.contextmanager
def ssh_server(workdir: Path, user: OsUser) -> Iterator[SshServer]:
    """A private sshd on 127.0.0.1 letting ``user`` in by key; stopped afterwards."""
    server = SshServer(workdir, user)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ssh_client_options(server: SshServer) -> list[str]:
    """OpenSSH client options for the private sshd: its key, strict host-key
    checking against its own known_hosts, never a prompt."""
    return [
        "-i",
        str(server.client_key),
        "-o",
        f"UserKnownHostsFile={server.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ]


def site_for(server: SshServer, root: Path, name: str = "bench") -> SiteConfig:
    """The logship site config that reaches ``server`` as its login user."""
    return SiteConfig(
        name=name,
        host=server.host,
        port=server.port,
        user=server.login_user.name,
        identity_file=server.client_key,
        known_hosts=server.known_hosts,
        root=root,  # type: ignore[arg-type]  # pydantic converts to PurePosixPath
    )


def main_config_text(
    state_dir: Path,
    server: SshServer,
    incoming: Path,
    *,
    site_config: Path | None = None,
    address: tuple[str, int] | None = None,
) -> str:
    """logship.toml for a primary whose one site `dr` is `server`'s `incoming` folder.

    With `site_config`, logship runs at the site too (this interpreter, that
    config), as in a real deployment where both sites have it installed. With
    `address`, the site is reached there instead (a relay in front of `server`).
    """
    command = (
        f"command = {json.dumps([sys.executable, '-m', 'logship', '--config', str(site_config)])}\n"
        if site_config is not None
        else ""
    )
    host, port = address or (server.host, server.port)
    return f"""[logship]
state_dir = "{state_dir}"

[sites.dr]
host = "{host}"
port = {port}
user = "{server.login_user.name}"
identity_file = "{server.client_key}"
known_hosts = "{server.known_hosts}"
root = "{incoming}"
{command}"""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` with backoff until true; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 1.0)


def _disk_writes() -> tuple[int, ...]:
    """Sectors written and I/Os in flight per block device (from /proc/diskstats)."""
    counts: list[int] = []
    with open("/proc/diskstats") as stats:
        for line in stats:
            fields = line.split()
            if not fields[2].startswith(("loop", "ram")):
                counts += [int(fields[9]), int(fields[11])]
    return tuple(counts)


def settle_disk(quiet_for: float = 1.0, timeout: float = 120) -> None:
    """Flush, then wait until no block device has written anything for `quiet_for`.

    Deleting a copied tree, or ext4's lazy inode-table init on a new file
    system, keeps the disk busy after `sync` returns: file creation was seen
    40x slower then. Each timed variant starts on a quiet disk instead.
    """
    os.sync()
    deadline = time.monotonic() + timeout
    before = _disk_writes()
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_for:
        if time.monotonic() > deadline:
            log(f"the disk did not go quiet within {timeout:g}s; timing anyway")
            return
        time.sleep(0.1)  # a sampling interval, not a wait for a condition
        now = _disk_writes()
        if now != before:
            before, quiet_since = now, time.monotonic()


@contextlib.contextmanager
def site_filesystem(path: Path, size_mib: int = 2048) -> Iterator[str]:
    """A new ext4 mounted at `path` for the site's copies, when running as root.

    Created with every inode table and the journal initialized up front: on a
    new VM disk ext4 initializes them lazily, and creating files in groups not
    yet initialized was seen 40x slower, at random, for rsync and logship
    alike. A small file system of its own makes every run start the same.
    Yields a description for the report; without root, a plain folder.
    """
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        yield "a folder on the machine's own file system"
        return
    image = path.with_suffix(".img")
    image.unlink(missing_ok=True)
    with open(image, "wb") as out:
        out.truncate(size_mib * 1024 * 1024)
    mkfs = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image)]
    subprocess.run(mkfs, check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    try:
        yield f"a new {size_mib} MiB ext4 (loop device, all inode tables initialized)"
    finally:
        subprocess.run(["umount", str(path)], check=False)
        image.unlink(missing_ok=True)


def run_timed(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 120
) -> float:
    """Wall time of one child process (no shell) that must exit 0."""
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"{cmd[0]} ... exited {proc.returncode}: {stderr}")
    return elapsed


def machine_cpu() -> tuple[float, float]:
    """CPU-seconds the whole machine has spent busy and idle since boot (/proc/stat):
    on loopback that is both ends, the kernel's share included. Time the VM's host
    gave to others (steal) counts as busy: it was not there to be used."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / hz, (idle + iowait) / hz


@dataclass(frozen=True)
class Window:
    """A timed stretch: its wall time and what the machine's CPUs did meanwhile."""

    seconds: float
    busy_cpu_s: float
    idle_cpu_s: float


class Timed(Protocol):
    """A timed run with the machine's CPU in it (a Window, or a run made from one)."""

    @property
    def seconds(self) -> float: ...

    @property
    def busy_cpu_s(self) -> float: ...

    @property
    def idle_cpu_s(self) -> float: ...


def add_cpu_figure(report: Report, figure: str, runs: Sequence[Timed], raw_bytes: int) -> Figure:
    """`cpu_<figure>`: the whole machine's busy CPU-seconds per GiB of `raw_bytes` in
    each run's timed window (median), and how many cores sat idle meanwhile. On
    loopback both ends share the machine, so this is what bounds a rate there."""
    per_gib = [run.busy_cpu_s / (raw_bytes / (1024 * MIB)) for run in runs]
    idle = median([run.idle_cpu_s / run.seconds for run in runs])
    return report.add(
        f"cpu_{figure}",
        median(per_gib),
        "CPU-s/GiB",
        detail=(
            "the whole machine (both ends, the kernel included) in the timed window; "
            f"{idle:.2f} of {os.cpu_count() or 1} cores idle"
        ),
        runs=per_gib,
    )


class Stopwatch:
    """Started when made; `stop()` gives the Window since then."""

    def __init__(self) -> None:
        self._busy, self._idle = machine_cpu()
        self._start = time.perf_counter()

    def stop(self) -> Window:
        seconds = time.perf_counter() - self._start
        busy, idle = machine_cpu()
        return Window(seconds, busy - self._busy, idle - self._idle)


# -- test data -----------------------------------------------------------------------


@dataclass(frozen=True)
class WalSet:
    files: list[Path]
    source: str  # how they were made, for the report

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _segment_name(number: int, timeline: int = 1) -> str:
    return f"{timeline:08X}{number // 256:08X}{number % 256:08X}"


def _archived(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if _WAL_SEGMENT.match(p.name) and p.stat().st_size == SEGMENT_SIZE
    )


def wal_generation_settings(archive: Path) -> dict[str, str]:
    """A cluster that makes test WAL fast and archives every segment whole."""
    return {
        "archive_mode": "on",
        "archive_library": "basic_archive",
        "basic_archive.archive_directory": str(archive),
        # WAL content is what matters; not waiting on every commit's flush
        # only makes the same kind of WAL faster.
        "synchronous_commit": "off",
        "checkpoint_timeout": "30s",
        "max_wal_size": "2GB",
    }


def real_wal(dest: Path, count: int, *, scale: int = 20, tpcb_budget: float = 240) -> WalSet:
    """``count`` real 16 MiB segments from a throwaway PostgreSQL 15 cluster.

    ``pgbench -i -s scale`` first (a bulk load: very compressible WAL), then the
    standard pgbench TPC-B load (updates, full-page images: WAL that compresses a
    few times) until ``count`` segments are archived or ``tpcb_budget`` seconds
    have passed; any shortfall is topped up with more ``pgbench -i`` rounds. Only
    segments PostgreSQL filled and archived itself are used (none is cut short by
    a switch), copied out of the archive written by ``basic_archive``.
    """
    user = bench_user()
    work = dest.parent / "walgen"
    work.mkdir(mode=0o755)
    archive = private_dir(work / "archive", user)
    cluster = PgCluster(work / "pgdata", free_port(), user)
    phase: dict[str, str] = {}  # segment name -> the load running when it was archived
    last = ["init"]

    def note(load: str) -> None:
        last[0] = load
        for segment in _archived(archive):
            phase.setdefault(segment.name, load)

    try:
        cluster.initdb()
        cluster.configure(wal_generation_settings(archive))
        cluster.start()

        def init_round() -> None:
            cluster.pgbench("-i", "-s", str(scale), "-q")
            note("init")

        log(f"generating {count} WAL segments: pgbench -i -s {scale}")
        init_round()
        deadline = time.monotonic() + tpcb_budget
        while len(_archived(archive)) < count and time.monotonic() < deadline:
            seconds = max(1, min(15, int(deadline - time.monotonic())))
            cluster.pgbench("-c", "4", "-j", "2", "-T", str(seconds), "-n")
            note("TPC-B")
            log(f"  pgbench TPC-B: {len(_archived(archive))}/{count} segments archived")
        for _ in range(64):  # bounded: each round adds about 16 segments at -s 20
            if len(_archived(archive)) >= count:
                break
            init_round()
        wait_until(lambda: len(_archived(archive)) >= count, 120, f"{count} archived segments")
        note(last[0])  # archived after the last round returned
    finally:
        cluster.destroy()
    dest.mkdir(mode=0o755, exist_ok=True)
    files = []
    chosen = _archived(archive)[:count]
    mix = ", ".join(
        f"{sum(phase.get(s.name) == load for s in chosen)} {load}" for load in ("init", "TPC-B")
    )
    for segment in chosen:
        target = dest / segment.name
        shutil.copyfile(segment, target)
        target.chmod(0o644)
        files.append(target)
    shutil.rmtree(work, ignore_errors=True)
    return WalSet(
        files,
        f"real WAL, PostgreSQL 15: pgbench -i -s {scale} then pgbench TPC-B "
        f"(segments used, by the load running when archived: {mix})",
    )


def synthetic_wal(dest: Path, count: int, seed: int = 15) -> WalSet:
    """WAL-like stand-ins: 8 KiB pages of 128-byte records, 20 random bytes each.

    Compresses about 6x with zstd -1, like a mixed OLTP WAL; deterministic.
    """
    rng = random.Random(seed)
    record, noisy = 128, 20
    per_segment = SEGMENT_SIZE // record
    filler = (b"pgbench_accounts abalance filler " * 4)[:record]
    dest.mkdir(mode=0o755, exist_ok=True)
    files = []
    for n in range(1, count + 1):
        buf = bytearray(filler * per_segment)
        noise = rng.randbytes(per_segment * noisy)
        for k in range(noisy):
            buf[k::record] = noise[k * per_segment : (k + 1) * per_segment]
        path = dest / _segment_name(n)
        path.write_bytes(bytes(buf))
        path.chmod(0o644)
        files.append(path)
    return WalSet(files, "synthetic WAL-like data (random 20/128 bytes per record)")


def wal_segments(dest: Path, count: int, *, synthetic: bool = False) -> WalSet:
    """Real WAL when PostgreSQL can make it, synthetic otherwise (said in the report)."""
    if not synthetic:
        try:
            return real_wal(dest, count)
        except Exception as exc:  # any failure of the real thing: say so and go on
            log(f"real WAL generation failed, using synthetic data: {exc}")
            shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(dest.parent / "walgen", ignore_errors=True)
    return synthetic_wal(dest, count)


@dataclass(frozen=True)
class ShipSetup:
    """WAL to ship and a private sshd site to ship it to, in one temp folder."""

    root: Path
    user: OsUser
    wal: WalSet
    server: SshServer
    incoming: Path

    @property
    def raw_mib(self) -> float:
        return self.wal.total_bytes / MIB


@contextlib.contextmanager
def ship_setup(count: int, *, synthetic: bool) -> Iterator[ShipSetup]:
    user = bench_user()
    with reachable_tempdir() as root:
        wal = wal_segments(root / "wal", count, synthetic=synthetic)
        log(f"{len(wal.files)} files, {wal.total_bytes / MIB:.0f} MiB: {wal.source}")
        with ssh_server(root / "sshd", user) as server:
            yield ShipSetup(root, user, wal, server, private_dir(root / "incoming", user))


def empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (kept), then flush it all to disk."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    os.sync()
