"""A private OpenSSH server on 127.0.0.1 for tests and demos."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from logship.demo_sandbox.osuser import (
    OsUser,
    ensure_login_allowed,
    is_root,
    run_checked,
    tail,
)
from logship.demo_sandbox.ports import free_port
from logship.demo_sandbox.procs import child_pids

DEFAULT_SSHD = Path("/usr/sbin/sshd")
HOST = "127.0.0.1"
# sshd refuses to start as root without its privilege separation directory.
PRIVSEP_DIR = Path("/run/sshd")
_HOST_KEY_TYPES = ("ed25519", "ecdsa")


def _config_value(value: str) -> str:
    """A path as an sshd_config argument: quoted if it has spaces."""
    if '"' in value:
        raise ValueError(f"cannot quote {value!r} for sshd_config")
    return f'"{value}"' if any(c.isspace() for c in value) else value


class SshServer:
    """An sshd listening on 127.0.0.1 that only lets ``login_user`` in, by key.

    Everything it needs (host keys, a client key pair, authorized_keys, known_hosts,
    config, log) lives in ``workdir``. Used as a context manager it is started on entry
    and stopped on exit.
    """

    def __init__(
        self,
        workdir: Path,
        login_user: OsUser,
        port: int | None = None,
        sshd: Path = DEFAULT_SSHD,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.login_user = login_user
        # Chosen now so that the port is known before start and survives restarts.
        self._port = port if port is not None else free_port()
        self.sshd = Path(sshd)
        self._proc: subprocess.Popen[bytes] | None = None
        #: what sshd runs for SFTP (a command line); see use_sftp_subsystem()
        self.sftp_subsystem = "internal-sftp"
        #: sshd's AllowTcpForwarding (None: its default, yes); see allow_tcp_forwarding()
        self.tcp_forwarding: str | None = None
        self._prepared = False

    # -- paths and properties ----------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def client_key(self) -> Path:
        return self.workdir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def authorized_keys(self) -> Path:
        return self.workdir / "authorized_keys"

    @property
    def config_file(self) -> Path:
        return self.workdir / "sshd_config"

    @property
    def log_file(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "sshd.pid"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def host_key(self, key_type: str) -> Path:
        return self.workdir / f"ssh_host_{key_type}_key"

    @property
    def host_key_types(self) -> tuple[str, ...]:
        return _HOST_KEY_TYPES

    def host_public_key(self, key_type: str) -> str:
        """`algorithm base64` of one host key, as a known_hosts line carries it."""
        pub = self.host_key(key_type).with_name(f"ssh_host_{key_type}_key.pub")
        return " ".join(pub.read_text(encoding="ascii").split()[:2])

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- key material ------------------------------------------------------------------

    def _keygen(self, key_type: str, path: Path, comment: str) -> None:
        # ssh-keygen asks before overwriting, and there is nobody to answer.
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".pub").unlink(missing_ok=True)
        run_checked(
            ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", comment, "-f", str(path)],
            timeout=60,
        )

    def _generate_host_keys(self) -> None:
        for key_type in _HOST_KEY_TYPES:
            self._keygen(key_type, self.host_key(key_type), f"logship-sandbox-host-{key_type}")

    def _write_private(self, path: Path, text: str, mode: int) -> None:
        """Write ``text`` to ``path`` owned by the login user, never wider than ``mode``."""
        path.unlink(missing_ok=True)
        path.touch(mode=0o600)
        path.write_text(text, encoding="utf-8")
        self.login_user.chown(path)
        path.chmod(mode)

    def _write_known_hosts(self) -> None:
        self._write_private(self.known_hosts, self._known_lines(HOST, self._port), 0o644)

    def _known_lines(self, host: str, port: int) -> str:
        return "".join(f"[{host}]:{port} {self.host_public_key(t)}\n" for t in _HOST_KEY_TYPES)

    def use_sftp_subsystem(self, command: str) -> None:
        """Serve SFTP with `command` from the next connection on (sshd restarts)."""
        self.sftp_subsystem = command
        self._reconfigure()

    def allow_tcp_forwarding(self, value: str) -> None:
        """sshd's `AllowTcpForwarding` ("no", "local", "remote", "yes", "all") from
        the next connection on (sshd restarts): a site that forbids the streaming
        tunnel's remote forward."""
        if value not in ("no", "local", "remote", "yes", "all"):
            raise ValueError(f"AllowTcpForwarding {value!r}")
        self.tcp_forwarding = value
        self._reconfigure()

    def _reconfigure(self) -> None:
        running = self.is_running()
        self.stop()
        if self._prepared:
            self._write_config()
        if running:
            self.start()

    def restrict_client_key(self, forced_command: str, permit_listen: str | None = None) -> None:
        """Let the client key run only `forced_command`, as a restricted site does:
        OpenSSH's `restrict` (no pty, forwarding or rc file) and `command=` (sshd
        runs it whatever the client asks for, the request in SSH_ORIGINAL_COMMAND).
        `permit_listen` ("host:port") gives the key back one remote forward, there
        only: the streaming tunnel. sshd reads authorized_keys at each login: no
        restart."""
        if '"' in forced_command or "\\" in forced_command or "\n" in forced_command:
            raise ValueError(f"cannot quote {forced_command!r} in authorized_keys")
        if permit_listen is not None and not re.fullmatch(r"[0-9.]+:[0-9]+", permit_listen):
            raise ValueError(f"permitlisten {permit_listen!r}")
        if not self._prepared:
            self._prepare()
        pub = self.client_key.with_name(self.client_key.name + ".pub").read_text(encoding="ascii")
        forward = f'port-forwarding,permitlisten="{permit_listen}",' if permit_listen else ""
        line = f'restrict,{forward}command="{forced_command}" {pub}'
        self._write_private(self.authorized_keys, line, 0o600)

    def add_restricted_key(self, forced_command: str, name: str = "restricted") -> Path:
        """A second client key (returned) that may only run `forced_command`; the
        first key keeps its full access, as a site admin's would."""
        if '"' in forced_command or "\\" in forced_command or "\n" in forced_command:
            raise ValueError(f"cannot quote {forced_command!r} in authorized_keys")
        if not self._prepared:
            self._prepare()
        key = self.workdir / f"client_{name}_ed25519"
        self._keygen("ed25519", key, f"logship-sandbox-{name}-{self.login_user.name}")
        self.login_user.chown(key)
        key.chmod(0o600)
        pub = key.with_name(key.name + ".pub").read_text(encoding="ascii")
        with open(self.authorized_keys, "a", encoding="ascii") as out:
            out.write(f'restrict,command="{forced_command}" {pub}')
        return key

    def trust_address(self, host: str, port: int) -> None:
        """Add this server's host keys to known_hosts under another address: a relay
        in front of it is the same server, reached another way."""
        with open(self.known_hosts, "a", encoding="utf-8") as out:
            out.write(self._known_lines(host, port))

    def _write_config(self) -> None:
        def path(p: Path) -> str:
            return _config_value(str(p))

        # sshd expands %-tokens in AuthorizedKeysFile, so a literal % must be doubled.
        authorized = _config_value(str(self.authorized_keys).replace("%", "%%"))
        lines = [
            f"ListenAddress {HOST}",
            f"Port {self._port}",
            *(f"HostKey {path(self.host_key(t))}" for t in _HOST_KEY_TYPES),
            f"PidFile {path(self.pid_file)}",
            f"AuthorizedKeysFile {authorized}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "UsePAM no",
            # The work dir lives under /tmp and is owned by root, which the strict
            # ownership checks on authorized_keys' ancestors would reject.
            "StrictModes no",
            f"AllowUsers {self.login_user.name}",
            f"Subsystem sftp {self.sftp_subsystem}",
            "LogLevel VERBOSE",
        ]
        if self.tcp_forwarding is not None:
            lines.append(f"AllowTcpForwarding {self.tcp_forwarding}")
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _prepare(self) -> None:
        """Generate all key material and files for a first start."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The login user's processes (sshd's per-user checks, ssh clients) read files
        # in here.
        self.workdir.chmod(0o755)
        if not self.login_user.can_reach(self.workdir):
            raise RuntimeError(
                f"{self.workdir} is not reachable by OS user {self.login_user.name!r}: "
                "every ancestor must be searchable by it (e.g. a 0755 directory under /tmp)"
            )
        self._generate_host_keys()
        self._keygen("ed25519", self.client_key, f"logship-sandbox-client-{self.login_user.name}")
        pub = self.client_key.with_name(self.client_key.name + ".pub")
        self.login_user.chown(self.client_key)
        self.client_key.chmod(0o600)
        self.login_user.chown(pub)
        self._write_private(self.authorized_keys, pub.read_text(encoding="ascii"), 0o600)
        self._write_known_hosts()
        self._write_config()
        self._prepared = True

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Start sshd and wait until it answers with an SSH banner."""
        if self.is_running():
            return
        if not self.sshd.exists():
            raise RuntimeError(
                f"OpenSSH server not found: install it with 'apt-get install openssh-server'"
                f" (looked for {self.sshd})"
            )
        if not self._prepared:
            self._prepare()
        if is_root():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
            PRIVSEP_DIR.chmod(0o755)
            ensure_login_allowed(self.login_user)
        sshd = str(self.sshd.absolute())  # sshd re-execs itself and insists on this
        run_checked([sshd, "-t", "-f", str(self.config_file)], timeout=30)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [sshd, "-D", "-e", "-f", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Keeps a Ctrl-C aimed at the test runner from reaching sshd mid-test.
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _banner(self) -> bytes | None:
        """The server's identification line, or None if nothing listens yet."""
        try:
            with socket.create_connection((HOST, self._port), timeout=2) as sock:
                sock.settimeout(2)
                return sock.recv(256)
        except OSError:
            return None

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with code {self._proc.returncode} during startup; "
                    f"log {self.log_file} (last lines):\n{tail(self.log_text())}"
                )
            banner = self._banner()
            # Another process could have taken the port since free_port() picked it:
            # only an SSH banner while our sshd is alive means we are the listener.
            if banner and banner.startswith(b"SSH-") and self._proc.poll() is None:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"sshd did not accept connections on {HOST}:{self._port} within "
                    f"{timeout:g}s; log {self.log_file} (last lines):\n{tail(self.log_text())}"
                )
            # Doubles as the pause between tries and an early exit if sshd dies.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=min(delay, remaining))
            delay = min(delay * 2, 0.5)

    def stop(self, timeout: float = 10) -> None:
        """Terminate our sshd (only its PID) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def cut(self) -> list[int]:
        """Stop sshd *and* end its live sessions, as a real link cut would.

        `stop()` ends only the listener, and OpenSSH leaves established sessions
        running then (that is what lets an admin restart sshd remotely). Freeze the
        listener so it accepts nothing new, freeze every process below it level by
        level (no new fork slips through), then kill them: only processes our own
        sshd started. Returns the session PIDs that were ended.
        """
        listener = self.pid
        if listener is None or not self.is_running():
            return []
        os.kill(listener, signal.SIGSTOP)
        sessions: list[int] = []
        frontier = [listener]
        while frontier:
            for pid in child_pids(frontier.pop()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    sessions.append(pid)
                    frontier.append(pid)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Delivered on continue, before it can accept again: it exits cleanly.
        os.kill(listener, signal.SIGTERM)
        os.kill(listener, signal.SIGCONT)
        self.stop()
        return sessions

    def rotate_host_key(self) -> None:
        """Replace the host keys and (re)start on the same port; known_hosts keeps the
        old ones, so clients that trust it must now refuse the server.

        Every host key type is replaced, so a client cannot fall back to an algorithm
        whose key still matches.
        """
        self.stop()
        if not self._prepared:
            self._prepare()
        self._generate_host_keys()
        self.start()

    def __enter__(self) -> SshServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SshServer(workdir={str(self.workdir)!r}, port={self._port})"
