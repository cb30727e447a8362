"""Shipping over an emulated WAN: logship vs OpenSSH `sftp`, through a shaped link.

Usage: python bench/wan.py [--files 16] [--repeat 2] [--synthetic]

The site's sshd is reached across a veth pair into a private network namespace,
rate-limited with `tc tbf` in each direction, through a user-space relay in that
namespace that holds every chunk for half the round trip each way (this kernel has
no netem). Profiles: 40 ms round trip at 200 Mbit/s, and 100 ms at 1 Gbit/s.
Needs root. JSON lines on stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import common
from common import MIB, Report, log, median
from throughput_vs_sftp import AES_GCM, Run, _stop, logship_daemon_all, sftp_put_all

import testkit
from logship.demo_sandbox import OsUser, SshServer
from testkit.netns import SiteLink, why_unavailable

BENCH = "wan"


@dataclass(frozen=True)
class Profile:
    name: str
    rtt_s: float
    mbit: float

    @property
    def link_mib_s(self) -> float:
        return self.mbit * 1e6 / 8 / MIB


PROFILES = (Profile("40ms-200mbit", 0.040, 200), Profile("100ms-1gbit", 0.100, 1000))
#: `logship run` variants: (compression, SSH connections)
VARIANTS = {
    "logship-none-c1": ("none", 1),
    "logship-none-c4": ("none", 4),
    "logship-zstd-c1": ("zstd", 1),
    "logship-zstd-c2": ("zstd", 2),
    "logship-zstd-c4": ("zstd", 4),
    "logship-zstd-c8": ("zstd", 8),
}


@dataclass
class Via:
    """The site's sshd as reached through the relay (what sftp_put_all reads)."""

    host: str
    port: int
    client_key: Path
    known_hosts: Path
    login_user: OsUser


@contextmanager
def shaped_path(server: SshServer, profile: Profile) -> Iterator[tuple[str, int]]:
    """A link shaped to `profile` with a delay relay in front of `server`."""
    link = SiteLink.create()
    relay = None
    try:
        link.shape(profile.mbit)
        # Its own process: the relay's threads stay off this one's GIL.
        relay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testkit.relay",
                "--netns",
                link.netns,
                "--listen",
                link.ns_ip,
                "--target",
                f"{server.host}:{server.port}",
                "--delay-ms",
                str(profile.rtt_s / 2 * 1000),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=testkit.child_env(),
        )
        assert relay.stdout is not None
        host, _, port = relay.stdout.readline().strip().rpartition(":")
        if not port:
            raise RuntimeError("the relay did not start")
        server.trust_address(host, int(port))
        yield host, int(port)
    finally:
        if relay is not None:
            if relay.stdin is not None:
                relay.stdin.close()  # its signal to stop
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()
        link.destroy()


def profile_runs(
    server: SshServer,
    profile: Profile,
    files: list[Path],
    root: Path,
    incoming: Path,
    user: OsUser,
    repeat: int,
    variants: list[str],
) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {name: [] for name in ("sftp", *variants)}
    mib = sum(f.stat().st_size for f in files) / MIB
    with shaped_path(server, profile) as (host, port):
        via = Via(host, port, server.client_key, server.known_hosts, server.login_user)
        remote = incoming / "sftp"
        for round_no in range(1, repeat + 1):
            for name in runs:
                common.empty_dir(incoming)
                common.private_dir(remote, user)
                if name == "sftp":
                    run = sftp_put_all(via, files, remote, root / "batch.txt", AES_GCM)  # type: ignore[arg-type]
                else:
                    compression, connections = VARIANTS[name]
                    run = logship_daemon_all(
                        server,
                        files,
                        root / "daemon",
                        incoming,
                        compression,
                        connections,
                        address=(host, port),
                    )
                rate = mib / run.seconds
                log(f"{profile.name} round {round_no}/{repeat} {name}: {rate:.1f} MiB/s")
                runs[name].append(run)
    common.empty_dir(incoming)
    return runs


def report_profile(
    report: Report, profile: Profile, runs: dict[str, list[Run]], raw_mib: float
) -> None:
    def rate(name: str) -> tuple[float, list[float]]:
        rates = [raw_mib / r.seconds for r in runs[name]]
        return median(rates), rates

    link = report.add(f"{profile.name}_link_rate", profile.link_mib_s, "MiB/s")
    value, rates = rate("sftp")
    sftp = report.add(
        f"{profile.name}_sftp",
        value,
        "MiB/s",
        baseline=link,
        detail=f"OpenSSH sftp -b -c aes128-gcm, plain put; {len(rates)} runs",
        runs=rates,
    )
    for name, (compression, connections) in VARIANTS.items():
        if name not in runs:
            continue
        value, rates = rate(name)
        report.add(
            f"{profile.name}_logship_{compression}_c{connections}",
            value,
            "MiB/s",
            baseline=sftp,
            detail=(
                f"logship run, raw MiB/s, {connections} connection(s); "
                f"{value / profile.link_mib_s:.2f}x the link rate; {len(rates)} runs"
            ),
            runs=rates,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=16, help="16 MiB segments (default 16)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per variant")
    parser.add_argument("--synthetic", action="store_true", help="WAL-like data, no PostgreSQL")
    parser.add_argument(
        "--profile", choices=[p.name for p in PROFILES], action="append", help="default: all"
    )
    parser.add_argument(
        "--variant", choices=list(VARIANTS), action="append", help="logship variants; default: all"
    )
    args = parser.parse_args(argv)
    if (why := why_unavailable()) is not None:
        log(f"skipped: {why}")
        return 0
    signal.signal(signal.SIGTERM, _stop)
    profiles = [p for p in PROFILES if not args.profile or p.name in args.profile]
    report = Report(BENCH, common.environment())
    with common.ship_setup(args.files, synthetic=args.synthetic) as bench:
        for profile in profiles:
            runs = profile_runs(
                bench.server,
                profile,
                bench.wal.files,
                bench.root,
                bench.incoming,
                bench.user,
                args.repeat,
                args.variant or list(VARIANTS),
            )
            report_profile(report, profile, runs, bench.raw_mib)
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
