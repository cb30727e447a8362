"""Memory and scale: the daemon's RSS with 10,000 pending files, and `status --json`
against a catalog of 1 million file rows.

Usage: python bench/scale.py [--pending 10000] [--rows 1000000] [--repeat 5]

The site is a port nothing listens on, so every file stays pending. The spool's
segments are sparse 16 MiB files: the daemon stats them and never reads them while
they wait. JSON lines on stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import common
from common import MIB, Report, log, median
from throughput_vs_sftp import CONNECTOR, _stop

from logship.demo_sandbox.ports import free_port

BENCH = "scale"
SEGMENT = 16 * MIB
RSS_TARGET_MIB = 150
STATUS_TARGET_S = 0.5


def _segment(number: int) -> str:
    return f"00000001{number >> 8:08X}{number & 0xFF:08X}"


def write_config(workdir: Path) -> Path:
    (workdir / "connectors").mkdir(parents=True)
    key = workdir / "no-key"
    key.write_text("")
    key.chmod(0o600)
    config = workdir / "logship.toml"
    config.write_text(
        f"""[logship]
state_dir = "{workdir / "state"}"
lag_sample_interval = "1h"

[sites.dr]
host = "127.0.0.1"
port = {free_port()}
user = "nobody"
identity_file = "{key}"
known_hosts = "{key}"
root = "/nonexistent"
"""
    )
    (workdir / "connectors" / f"{CONNECTOR}.toml").write_text(
        """kind = "postgresql"
site = "dr"
rpo = "60s"
heartbeat = false

[primary]
dsn = "host=/nonexistent port=5432 dbname=postgres"

[standby]
dsn = "host=/nonexistent port=5433 dbname=postgres"
data_dir = "/nonexistent"
"""
    )
    return config


def _rows(catalog: Path) -> int:
    try:
        with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("select count(*) from spool_files").fetchone()[0])
    except sqlite3.Error:
        return 0


def _memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def pending_rss(report: Report, workdir: Path, config: Path, pending: int) -> None:
    spool = workdir / "state" / "spool" / CONNECTOR
    spool.mkdir(parents=True, mode=0o700)
    for number in range(1, pending + 1):
        with open(spool / _segment(number), "wb") as out:
            out.truncate(SEGMENT)
    catalog = workdir / "state" / "catalog.db"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "logship", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        started = time.perf_counter()
        common.wait_until(lambda: _rows(catalog) >= pending, 1800, "every file in the catalog")
        discovered = time.perf_counter() - started
        log(f"{pending} files in the catalog after {discovered:.1f}s")
        peak = 0
        for _ in range(20):  # ten seconds of retries against the closed site
            peak = max(peak, _memory_kib(daemon.pid)["VmRSS"])
            time.sleep(0.5)
        hwm = _memory_kib(daemon.pid)["VmHWM"]
    finally:
        daemon.terminate()
        daemon.wait(60)
    target = report.add("rss_target", RSS_TARGET_MIB, "MiB")
    report.add(
        "daemon_peak_rss",
        hwm / 1024,
        "MiB",
        baseline=target,
        detail=f"VmHWM with {pending} pending files (VmRSS up to {peak / 1024:.0f} MiB after)",
    )
    report.add(
        "discover_pending",
        discovered,
        "s",
        detail=f"daemon start until {pending} spool files were rows in the catalog",
    )


def status_time(report: Report, workdir: Path, config: Path, rows: int, repeat: int) -> None:
    catalog = workdir / "state" / "catalog.db"
    have = _rows(catalog)
    now = time.time()
    with sqlite3.connect(catalog) as db:
        db.executemany(
            "insert into spool_files (connector, name, order_key, size, closed_at, discovered_at,"
            " state, sha256, stored_size, shipped_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    CONNECTOR,
                    name := _segment(number),
                    f"00000001.0.{name}",
                    SEGMENT,
                    now - 1,
                    now - 1,
                    "shipped",
                    "0" * 64,
                    SEGMENT // 6,
                    now,
                )
                for number in range(0x100000, 0x100000 + rows - have)
            ),
        )
    log(f"catalog holds {_rows(catalog)} rows")
    # The rows went in behind the daemon's back; a running daemon's monitor walks
    # them once and keeps how far they are durable, and then walks only new rows.
    first, again = monitor_walks(config)
    report.add(
        "monitor_first_walk_1m_rows",
        first,
        "s",
        detail="the daemon's monitor with no durable prefix kept yet: reads every row once",
    )
    report.add(
        "monitor_walk_1m_rows",
        again,
        "s",
        detail="the daemon's monitor after that: only the rows past the prefix (none here)",
    )
    status = [sys.executable, "-m", "logship", "--config", str(config), "status", "--json"]
    floor = [sys.executable, "-c", "pass"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    common.run_timed(status, env=env)  # warm: bytecode and page cache
    times = [common.run_timed(status, env=env) for _ in range(repeat)]
    floors = [common.run_timed(floor, env=env) for _ in range(repeat)]
    target = report.add("status_target", STATUS_TARGET_S, "s")
    report.add(
        "status_json_1m_rows",
        median(times),
        "s",
        baseline=target,
        detail=f"`logship status --json`, whole process, {_rows(catalog)} rows; median of {repeat}",
        runs=times,
    )
    report.add("python_startup", median(floors), "s", detail="python -c pass: the floor")


def monitor_walks(config_path: Path) -> tuple[float, float]:
    """Seconds of the daemon's status sample: the first one, then the next."""
    from logship.catalog.store import Catalog
    from logship.config.load import load_config
    from logship.status.monitor import collect_statuses

    config = load_config(config_path)
    catalog = Catalog(config.catalog_url)
    try:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            collect_statuses(config, catalog, [CONNECTOR], time.time(), remember=True)
            times.append(time.perf_counter() - start)
    finally:
        catalog.close()
    return times[0], times[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    report = Report(BENCH, common.environment())
    with common.reachable_tempdir() as root:
        config = write_config(root)
        pending_rss(report, root, config, args.pending)
        status_time(report, root, config, args.rows, args.repeat)
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
