"""A whole primary + standby + loopback SSH deployment in one folder.

The demo and the end-to-end tests both build this: a primary cluster archiving
through logship, a private sshd standing in for the DR site, a logship config
describing both, and the CLI run as the OS user that runs PostgreSQL (as in
production, where archive-wal and restore-wal run inside PostgreSQL).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from logship.demo_sandbox.osuser import OsUser
from logship.demo_sandbox.ports import free_port
from logship.demo_sandbox.postgres import PgCluster
from logship.demo_sandbox.procs import child_pids, kill_tree
from logship.demo_sandbox.sshd import SshServer

CONNECTOR = "main"
REPLICATION_ROLE = "logship_replication"


def logship_command() -> list[str]:
    """How PostgreSQL (and the tests) invoke this same installed logship."""
    return [sys.executable, "-m", "logship"]


@dataclass
class Deployment:
    root: Path
    user: OsUser
    connector: str = CONNECTOR
    rpo: str = "60s"
    compression: str = "zstd"
    archive_via: str = "command"  # or "basic_archive"
    #: give promote a DSN that reaches the primary from the standby site
    check_dsn: bool = False
    primary_port: int = field(default_factory=free_port)
    standby_port: int = field(default_factory=free_port)
    #: where the daemon reaches the site's sshd, when not directly (a relay)
    site_address: tuple[str, int] | None = None
    #: the site's io_timeout and connections, when not the defaults
    io_timeout: str | None = None
    connections: int | None = None
    #: how the daemon runs logship at the site, when not this same one
    site_command: list[str] | None = None
    #: the site in restricted mode: the daemon's key is a `site-gate` forced command
    restricted: bool = False
    #: stream WAL through the SSH link as it is written ([streaming] enabled)
    streaming: bool = False
    #: with streaming: commits wait for the standby's flush
    synchronous: bool = False
    #: with synchronous: "availability" or "protection"
    protection: str = "availability"
    fallback_after: str = "5s"
    max_slot_wal_keep: str = "1GB"
    #: the port sshd at the site opens on its loopback for the standby
    stream_port: int = field(default_factory=free_port)
    #: the daemon ships WAL from pg_wal as soon as it is ready ([primary] data_dir)
    read_ahead: bool = False
    #: with read_ahead: how long archive-wal waits for it ([primary] archive_wait)
    archive_wait: str | None = None

    def __post_init__(self) -> None:
        self.root = self.root.absolute()
        self.primary = PgCluster(
            self.root / "primary-site" / "pgdata", self.primary_port, self.user
        )
        self.sshd = SshServer(self.root / "sshd", self.user)
        self.standby = PgCluster(
            self.root / "standby-site" / "pgdata", self.standby_port, self.user
        )
        self._daemon: subprocess.Popen[bytes] | None = None

    # -- layout -----------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def config_path(self) -> Path:
        return self.config_dir / "logship.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "primary-site" / "logship"

    @property
    def incoming(self) -> Path:
        return self.root / "standby-site" / "incoming"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool" / self.connector

    @property
    def replication_passfile(self) -> Path:
        """At the standby site: the replication role's password, for its walreceiver."""
        return self.root / "standby-site" / "replication.pgpass"

    @property
    def daemon_log(self) -> Path:
        return self.root / "logship-run.log"

    def _private_dir(self, path: Path) -> None:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.chmod(0o700)
        self.user.chown(path)

    # -- building ---------------------------------------------------------------

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "connectors").mkdir(exist_ok=True)
        self.config_dir.chmod(0o755)
        host, port = self.site_address or (self.sshd.host, self.sshd.port)
        self.config_path.write_text(
            f"""[logship]
state_dir = "{self.state_dir}"
reconcile_interval = "5s"
lag_sample_interval = "1s"

[sites.dr]
host = "{host}"
port = {port}
user = "{self.user.name}"
identity_file = "{self.sshd.client_key}"
known_hosts = "{self.sshd.known_hosts}"
root = "{self.incoming}"
{f'io_timeout = "{self.io_timeout}"' if self.io_timeout else ""}
{f"connections = {self.connections}" if self.connections else ""}
command = {json.dumps(self.site_command or [*logship_command(), "--config", str(self.config_path)])}
{"restricted = true" if self.restricted else ""}
"""
        )
        (self.config_dir / "connectors" / f"{self.connector}.toml").write_text(
            f"""kind = "postgresql"
site = "dr"
rpo = "{self.rpo}"
compression = "{self.compression}"

[primary]
dsn = "{self.primary.dsn()}"
{f'check_dsn = "{self.primary.dsn()}"' if self.check_dsn else ""}
{f'data_dir = "{self.primary.data_dir}"' if self.read_ahead else ""}
{f'archive_wait = "{self.archive_wait}"' if self.archive_wait else ""}

[standby]
dsn = "{self.standby.dsn()}"
data_dir = "{self.standby.data_dir}"
{self._streaming_section()}"""
        )

    def _streaming_section(self) -> str:
        if not self.streaming:
            return ""
        return f"""
[streaming]
enabled = true
synchronous = {json.dumps(self.synchronous)}
protection = "{self.protection}"
fallback_after = "{self.fallback_after}"
max_slot_wal_keep = "{self.max_slot_wal_keep}"
site_port = {self.stream_port}
user = "{REPLICATION_ROLE}"
passfile = "{self.replication_passfile}"
"""

    def add_replication_role(self) -> None:
        """A password-protected replication role at the primary, and its password
        in a file only the standby's OS user may read: anyone else at the site who
        reaches the tunnel's port gets nothing without it."""
        password = secrets.token_urlsafe(24)
        self.primary.execute(
            f"create role {REPLICATION_ROLE} with replication login password '{password}'"
        )
        hba = self.primary.data_dir / "pg_hba.conf"
        # First match wins: the role must authenticate, whatever trust follows.
        rule = f"host replication {REPLICATION_ROLE} 127.0.0.1/32 scram-sha-256\n"
        hba.write_text(rule + hba.read_text(encoding="utf-8"), encoding="utf-8")
        self.primary.execute("select pg_reload_conf()")
        passfile = self.replication_passfile
        passfile.unlink(missing_ok=True)
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"*:*:*:{REPLICATION_ROLE}:{password}\n")
        self.user.chown(passfile)

    def archive_settings(self) -> dict[str, str]:
        settings = {"archive_mode": "on", "archive_timeout": "10s", "wal_level": "replica"}
        if self.archive_via == "basic_archive":
            settings["archive_library"] = "basic_archive"
            settings["basic_archive.archive_directory"] = str(self.spool_dir)
        else:
            command = [*logship_command(), "--config", str(self.config_path)]
            settings["archive_command"] = (
                shlex.join([*command, "archive-wal", self.connector]) + " %p"
            )
        return settings

    def build_primary(self) -> None:
        """sshd, site folders, config and a primary archiving into logship's spool."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.sshd.start()
        for site in ("primary-site", "standby-site"):
            (self.root / site).mkdir(mode=0o755, exist_ok=True)
        # As on a real standby host, PostgreSQL's user owns where its data dir goes.
        self.user.chown(self.root / "standby-site")
        self._private_dir(self.state_dir)
        self._private_dir(self.incoming)
        if self.archive_via == "basic_archive":
            self._private_dir(self.spool_dir.parent)
            self._private_dir(self.spool_dir)
        self.write_config()
        if self.restricted:
            self.restrict_key()
        self.primary.initdb()
        self.primary.configure(self.archive_settings())
        self.primary.start()
        if self.streaming:
            self.add_replication_role()

    def enable_streaming(self) -> None:
        """Turn streaming on in a running archive-only deployment, as an operator
        would: a replication role at the primary, [streaming] in the connector's
        config and `logship run` restarted on it. The daemon's standby sampling
        then points the standby's walreceiver at the port sshd opens at the site."""
        if self.streaming:
            return
        self.streaming = True
        self.add_replication_role()
        self.write_config()
        self.stop_daemon()
        self.start_daemon()

    def restrict_key(self) -> None:
        """The daemon's key may run only `site-gate` at the site (a forced command)."""
        # The installed script, not `python -m` (whose import path starts in the
        # working directory: the login user's home under sshd).
        script = str(Path(sys.executable).parent / "logship")
        gate = [script, "--config", str(self.config_path), "site-gate", "--site", "dr"]
        # With streaming, the key may also open the tunnel's one port, there only,
        # and sshd lets it open no connection from the site.
        listen = f"127.0.0.1:{self.stream_port}" if self.streaming else None
        self.sshd.restrict_client_key(shlex.join(gate), permit_listen=listen)
        if self.streaming:
            self.sshd.allow_tcp_forwarding("remote")

    # -- running logship --------------------------------------------------------

    def logship(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            *self.user.command_prefix(),
            *logship_command(),
            "--config",
            str(self.config_path),
            *args,
        ]
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return result

    def start_daemon(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`logship run`; `env` adds variables (the fault suite's crash points)."""
        if self._daemon is not None and self._daemon.poll() is None:
            return self._daemon
        log = open(self.daemon_log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self._daemon = subprocess.Popen(
                [
                    *self.user.command_prefix(),
                    *logship_command(),
                    "--config",
                    str(self.config_path),
                    "run",
                ],
                stdout=log,
                stderr=log,
                cwd=self.root,
                env={**os.environ, **env} if env else None,
            )
        finally:
            log.close()
        return self._daemon

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        daemon, self._daemon = self._daemon, None
        if daemon is None or daemon.poll() is not None:
            return None if daemon is None else daemon.returncode
        # Signal the daemon itself, not runuser: runuser re-raises a signal it
        # receives on itself, which would hide the daemon's own exit code.
        if sig == signal.SIGKILL:
            kill_tree(daemon.pid)
        else:
            for pid in child_pids(daemon.pid) or [daemon.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        try:
            return daemon.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(daemon.pid)
            return daemon.wait(timeout=timeout)

    @property
    def daemon(self) -> subprocess.Popen[bytes] | None:
        return self._daemon

    def standby_up(self) -> None:
        self.logship("base-backup", self.connector)
        self.logship("standby", "restore", self.connector)

    # -- watching ---------------------------------------------------------------

    def switch_wal(self) -> str:
        """Close the current segment now; returns the LSN the standby must pass."""
        # pg_switch_wal()'s own answer: the current LSN may already be in the next
        # segment (any write after the switch), which would wait for archive_timeout.
        ((lsn,),) = self.primary.query("select pg_switch_wal()::text")
        return str(lsn)

    def wait_replayed(self, lsn: str, timeout: float = 120) -> None:
        self.standby.wait_until(
            f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", timeout=timeout
        )

    def teardown(self) -> None:
        self.stop_daemon(timeout=30)
        for cluster in (self.standby, self.primary):
            with contextlib.suppress(Exception):
                cluster.stop(mode="immediate")
        self.sshd.stop()


def wait_for(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll `predicate` until truthy; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
