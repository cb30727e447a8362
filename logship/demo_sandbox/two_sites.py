"""Two sites that can swap roles: `main` and `dr`, each with its own sshd, its
logship state and incoming folder, and the same configuration files, a
connector written with [sides.main] and [sides.dr]."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from logship.demo_sandbox.deployment import Deployment, logship_command
from logship.demo_sandbox.postgres import PgCluster
from logship.demo_sandbox.procs import child_pids, kill_tree
from logship.demo_sandbox.sshd import SshServer

SITES = ("main", "dr")


@dataclass
class TwoSiteDeployment(Deployment):
    #: [sides.*] read_ahead at both sides
    two_site_read_ahead: bool = True
    #: the primary's data checksums and wal_log_hints (either lets pg_rewind run)
    checksums: bool = True
    wal_log_hints: bool = True
    _daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sshd_main = SshServer(self.root / "sshd-main", self.user)

    # -- layout -----------------------------------------------------------------

    def site_dir(self, site: str) -> Path:
        return self.root / ("primary-site" if site == "main" else "standby-site")

    def site_state_dir(self, site: str) -> Path:
        return self.site_dir(site) / "logship"

    def site_incoming(self, site: str) -> Path:
        return self.site_dir(site) / "incoming"

    def cluster(self, site: str) -> PgCluster:
        return self.primary if site == "main" else self.standby

    def _sshd(self, site: str) -> SshServer:
        return self.sshd_main if site == "main" else self.sshd

    def daemon_log_of(self, site: str) -> Path:
        return self.root / f"logship-run-{site}.log"

    def command_at(self, site: str) -> list[str]:
        return [*logship_command(), "--config", str(self.config_path), "--this-site", site]

    # -- building ---------------------------------------------------------------

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "connectors").mkdir(exist_ok=True)
        self.config_dir.chmod(0o755)
        sites = ""
        for site in SITES:
            sshd = self._sshd(site)
            sites += f"""
[sites.{site}]
host = "{sshd.host}"
port = {sshd.port}
user = "{self.user.name}"
identity_file = "{sshd.client_key}"
known_hosts = "{sshd.known_hosts}"
root = "{self.site_incoming(site)}"
state_dir = "{self.site_state_dir(site)}"
command = {json.dumps(self.command_at(site))}
"""
        self.config_path.write_text(
            f"""[logship]
state_dir = "{self.site_state_dir("main")}"
reconcile_interval = "5s"
lag_sample_interval = "1s"
{sites}"""
        )
        sides = ""
        for site in SITES:
            cluster = self.cluster(site)
            sides += f"""
[sides.{site}]
dsn = "{cluster.dsn()}"
check_dsn = "{cluster.dsn()}"
data_dir = "{cluster.data_dir}"
read_ahead = {json.dumps(self.two_site_read_ahead)}
{f'archive_wait = "{self.archive_wait}"' if self.archive_wait else ""}
"""
        (self.config_dir / "connectors" / f"{self.connector}.toml").write_text(
            f"""kind = "postgresql"
rpo = "{self.rpo}"
compression = "{self.compression}"
{sides}"""
        )

    def archive_settings(self) -> dict[str, str]:
        command = self.command_at("main")
        return {
            "archive_mode": "on",
            "archive_timeout": "10s",
            "wal_level": "replica",
            "wal_log_hints": "on" if self.wal_log_hints else "off",
            "archive_command": shlex.join([*command, "archive-wal", self.connector]) + " %p",
        }

    def build_primary(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for site in SITES:
            self._sshd(site).start()
            self.site_dir(site).mkdir(mode=0o755, exist_ok=True)
            # As on a real host, PostgreSQL's user owns where its data dir goes.
            self.user.chown(self.site_dir(site))
            self._private_dir(self.site_state_dir(site))
            self._private_dir(self.site_incoming(site))
        self.write_config()
        self.primary.initdb()
        if not self.checksums:
            program = self.primary.bin_dir / "pg_checksums"
            self.user.run(
                [str(program), "--disable", "-D", str(self.primary.data_dir)], cwd=self.root
            )
        self.primary.configure(self.archive_settings())
        self.primary.start()

    # -- running logship --------------------------------------------------------

    def at(
        self, site: str, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """logship at `site` (its --this-site)."""
        return self.logship("--this-site", site, *args, check=check, timeout=timeout)

    def standby_up(self) -> None:
        self.at("main", "base-backup", self.connector)
        self.at("dr", "standby", "restore", self.connector)

    def start_site_daemon(self, site: str) -> subprocess.Popen[bytes]:
        running = self._daemons.get(site)
        if running is not None and running.poll() is None:
            return running
        log = open(self.daemon_log_of(site), "ab")  # noqa: SIM115 - handed to the child
        try:
            self._daemons[site] = subprocess.Popen(
                [*self.user.command_prefix(), *self.command_at(site), "run"],
                stdout=log,
                stderr=log,
                cwd=self.root,
            )
        finally:
            log.close()
        return self._daemons[site]

    def stop_site_daemon(self, site: str, timeout: float = 60) -> int | None:
        daemon = self._daemons.pop(site, None)
        if daemon is None or daemon.poll() is not None:
            return None if daemon is None else daemon.returncode
        for pid in child_pids(daemon.pid) or [daemon.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            return daemon.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(daemon.pid)
            return daemon.wait(timeout=timeout)

    def teardown(self) -> None:
        for site in list(self._daemons):
            self.stop_site_daemon(site, timeout=30)
        super().teardown()
        self.sshd_main.stop()
