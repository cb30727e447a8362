"""The streaming tunnel: a port on the site's loopback that leads to the primary.

sshd at the site listens on 127.0.0.1:`site_port` (OpenSSH's `tcpip-forward`, a
remote port forward that the daemon asks for over its own SSH connection); each
connection the standby's walreceiver makes there arrives here as a channel and is
joined to the primary's PostgreSQL. No database port crosses sites, and the bytes
are PostgreSQL's own replication protocol: logship carries them, it does not
speak it.

The tunnel has an SSH connection of its own, not the shipping worker's: a backlog
of segments in flight on a shared connection would hold streamed WAL (and, in
synchronous mode, every commit) behind it, and a reconnect of one would cut the
other.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

import paramiko

from logship.config.model import SiteConfig
from logship.engines.postgresql.streaming.settings import SITE_LISTEN_HOST
from logship.engines.postgresql.streaming.startup import StartupRefused, read_startup
from logship.engines.postgresql.tools import DsnEndpoint
from logship.errors import OperationFailed
from logship.logs import event
from logship.ship.sftp import open_client, where
from logship.ship.ssh_forward import join_streams

log = logging.getLogger("logship.streaming")

#: how often a silent SSH connection is probed, so a dead link is found by the
#: TCP_USER_TIMEOUT that open_client sets instead of never
KEEPALIVE_S = 2
#: a connection that has not sent its startup message by then is not a walreceiver
STARTUP_TIMEOUT_S = 10.0


class ForwardRefused(OperationFailed):
    """sshd at the site would not listen on the port (forwarding not allowed, or
    the port taken)."""


def forward_refused(site: SiteConfig, port: int) -> ForwardRefused:
    return ForwardRefused(
        f"site {site.name}: sshd at {where(site)} refused to listen on "
        f"{SITE_LISTEN_HOST}:{port} for streaming: allow it with `AllowTcpForwarding remote` "
        "in the site's sshd_config (a restricted key also needs "
        f'`port-forwarding,permitlisten="{SITE_LISTEN_HOST}:{port}"`), or pick a free '
        "[streaming].site_port"
    )


def primary_connector(endpoint: DsnEndpoint) -> Callable[[], socket.socket]:
    """How to open a connection to the primary: its DSN's first TCP host, else its
    first socket directory (libpq's own choice order for one host)."""
    if endpoint.tcp_hosts:
        address = (endpoint.tcp_hosts[0], endpoint.port)

        def tcp() -> socket.socket:
            sock = socket.create_connection(address, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
            return sock

        return tcp
    directory = endpoint.socket_dirs[0] if endpoint.socket_dirs else "/var/run/postgresql"
    path = f"{directory}/.s.PGSQL.{endpoint.port}"

    def unix() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(path)
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        return sock

    return unix


class _Joint(threading.Thread):
    """One forwarded connection: its startup message checked, then joined to the
    primary, bytes both ways until either side ends."""

    def __init__(self, tunnel: SiteTunnel, channel: paramiko.Channel) -> None:
        super().__init__(name="stream-joint", daemon=True)
        self.tunnel = tunnel
        self.channel = channel
        self.primary: socket.socket | None = None

    def run(self) -> None:
        try:
            self.channel.settimeout(STARTUP_TIMEOUT_S)
            startup = read_startup(self.channel.recv, self.channel.sendall, self.tunnel.role)
            self.primary = self.tunnel.join()
            self.primary.sendall(startup.raw)
            self.channel.settimeout(None)
            join_streams(self.channel, self.primary, "stream-joint-up")
        except StartupRefused as exc:
            self.tunnel.refused(str(exc))
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if self.primary is None:
                self.tunnel.refused(f"the primary is not reachable: {exc}")
            # else: either end gone; the other is closed below
        finally:
            self.close()
            self.tunnel.forget(self)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        if self.primary is not None:
            with contextlib.suppress(OSError):
                self.primary.close()


class SiteTunnel:
    """An SSH connection to the site holding one remote port forward to the primary.

    `open` raises ForwardRefused when sshd will not listen, OperationFailed when the
    site cannot be reached; `is_alive` turns False when the connection is lost, and
    then every joined connection has been closed (the walsender and walreceiver see
    the end at once instead of after their timeouts).
    """

    def __init__(
        self,
        site: SiteConfig,
        site_port: int,
        join: Callable[[], socket.socket],
        connector: str,
        role: str,
    ) -> None:
        self.site = site
        self.site_port = site_port
        self.join = join
        #: the only role a connection through the tunnel may log in as
        self.role = role
        self._connector = connector
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self._joints: set[_Joint] = set()

    def open(self) -> None:
        client = open_client(self.site, quick_ack=True)
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_S)
        try:
            transport.request_port_forward(SITE_LISTEN_HOST, self.site_port, handler=self._accept)
        except paramiko.SSHException:
            client.close()
            raise forward_refused(self.site, self.site_port) from None
        self._client = client

    @property
    def is_alive(self) -> bool:
        client = self._client
        transport = client.get_transport() if client is not None else None
        return transport is not None and transport.is_active()

    @property
    def client(self) -> paramiko.SSHClient:
        """The tunnel's SSH connection, for a command run at the site through it."""
        if self._client is None:
            raise OperationFailed(f"site {self.site.name}: the streaming tunnel is not open")
        return self._client

    def _accept(
        self,
        channel: paramiko.Channel,
        origin: tuple[str, int],
        server: tuple[str, int],
    ) -> None:
        # paramiko's transport thread calls this: anything slow goes to the joint.
        joint = _Joint(self, channel)
        with self._lock:
            self._joints.add(joint)
        joint.start()

    def refused(self, why: str) -> None:
        event(
            log,
            logging.WARNING,
            "streaming connection refused at the tunnel",
            connector=self._connector,
            why=why,
        )

    def forget(self, joint: _Joint) -> None:
        with self._lock:
            self._joints.discard(joint)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            transport = client.get_transport()
            if transport is not None and transport.is_active():
                with contextlib.suppress(Exception):
                    transport.cancel_port_forward(SITE_LISTEN_HOST, self.site_port)
            client.close()
        with self._lock:
            joints = list(self._joints)
        for joint in joints:
            joint.close()
