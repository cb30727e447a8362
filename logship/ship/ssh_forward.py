"""A local port forward through an SSH connection to a site: a port on this host's
loopback that leads to a host and port as seen from the site.

Each connection accepted on 127.0.0.1:<port> here becomes a `direct-tcpip`
channel (OpenSSH's local forward, `ssh -L`), which sshd at the site connects to
`host:port` there: libpq programs here (pg_rewind --source-server, psql) reach a
PostgreSQL at the other site through the SSH link, and no database port is opened
across sites. The bytes are the program's own protocol: the forward carries them,
it does not read them.

The kernel picks the port when the listener binds, so no other program can hold
it. Any local user can connect to a loopback port, and the far PostgreSQL sees
the connection come from its own loopback: its pg_hba.conf must still ask for a
password (or a certificate) there. With `socket_dir`, the forward listens on a
Unix socket in that private folder instead, as PostgreSQL names its own
(`.s.PGSQL.<port>`, so libpq reaches it with host=<folder> port=<port>): only the
folder's owner (and root) can connect.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import paramiko

from logship.errors import OperationFailed, first_line, shown_text
from logship.logs import event

log = logging.getLogger("logship.ship.forward")

CHUNK = 64 * 1024
LISTEN_HOST = "127.0.0.1"
#: pg_rewind needs one connection, psql one, a check a few: more is not ours
MAX_CONNECTIONS = 8
#: how long sshd at the site may take to connect to the far end
OPEN_TIMEOUT_S = 15.0
#: how long closing waits for each connection's threads to end
JOIN_TIMEOUT_S = 5.0
#: failures remembered for the caller's error message
ERRORS_KEPT = 10

#: a Unix socket path is at most 107 bytes (sun_path holds 108 with the final NUL)
MAX_SOCKET_PATH = 107
#: the origin a channel reports for a connection on a Unix socket
_UNIX_ORIGIN = ("127.0.0.1", 0)

#: a host name, an IPv4 or an IPv6 address, as sshd at the site resolves it
_HOST = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")


def join_streams(channel: paramiko.Channel, sock: socket.socket, name: str) -> None:
    """Bytes both ways between `channel` and `sock` until either side ends; then
    neither passes more, and the channel is closed (the caller closes `sock`).

    A thread for each direction, each blocked in its own read: a synchronous
    commit waits for every hop, and a wake-up through paramiko's condition is
    quicker than one through select on its pipe. Raises what a read or write on
    either side raised (OSError, EOFError, paramiko.SSHException).
    """
    other = threading.Thread(
        target=_channel_to_socket, args=(channel, sock), name=name, daemon=True
    )
    other.start()
    try:
        while data := sock.recv(CHUNK):
            channel.sendall(data)
    finally:
        # The socket's end is gone (or the link): nothing more will pass either way.
        channel.close()
        other.join()


def _channel_to_socket(channel: paramiko.Channel, sock: socket.socket) -> None:
    try:
        while data := channel.recv(CHUNK):
            sock.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        # The channel's end is gone (or the link): the socket's peer must see it
        # now, and the other direction's read must end too.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _Joint(threading.Thread):
    """One accepted connection: a channel to the far end opened for it, then bytes
    both ways until either side ends. A far end that cannot be reached closes the
    local connection (its client reads the end of the stream)."""

    def __init__(self, forward: LocalForward, sock: socket.socket, peer: tuple[str, int]) -> None:
        super().__init__(name="forward-joint", daemon=True)
        self.forward = forward
        self.sock = sock
        self.peer = peer
        self.channel: paramiko.Channel | None = None
        self._closed = threading.Event()

    def run(self) -> None:
        try:
            try:
                channel = self.forward.transport.open_channel(
                    "direct-tcpip",
                    (self.forward.host, self.forward.port),
                    self.peer,
                    timeout=self.forward.open_timeout,
                )
            except paramiko.ChannelException as exc:
                self.forward.failed(f"refused at the far end: {exc.text}")
                return
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self.forward.failed(f"the SSH connection failed: {first_line(exc)}")
                return
            self.channel = channel
            if self._closed.is_set():
                return  # closed while the channel was opened
            join_streams(channel, self.sock, "forward-joint-down")
        except (OSError, EOFError, paramiko.SSHException):
            pass  # either end gone; both are closed below
        finally:
            self.stop()
            # Closed here only, by the one thread that uses it: a socket closed
            # under another thread's read could see its number reused meanwhile.
            self.sock.close()
            self.forward.forget(self)

    def stop(self) -> None:
        """End the connection both ways (from any thread); its own thread ends."""
        self._closed.set()
        if self.channel is not None:
            with contextlib.suppress(Exception):
                self.channel.close()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class LocalForward:
    """127.0.0.1:`local_port` here, forwarded through `transport` to `host:port` as
    seen from the site; at most `max_connections` at once (more are closed at
    once). `label` names the site in messages ("site dr").

    With `socket_dir` (a folder only its owner may enter), the forward listens on
    `socket_dir/.s.PGSQL.<port>` instead, owned by the folder's owner, and
    `local_port` is `port`: libpq connects with host=`socket_dir` port=`port`.

    Used as a context manager it listens on entry and, on exit, stops listening
    and closes every forwarded connection; the SSH connection stays its owner's.
    """

    def __init__(
        self,
        transport: paramiko.Transport,
        host: str,
        port: int,
        *,
        label: str,
        max_connections: int = MAX_CONNECTIONS,
        open_timeout: float = OPEN_TIMEOUT_S,
        socket_dir: Path | None = None,
    ) -> None:
        if not isinstance(host, str) or not _HOST.fullmatch(host):
            raise OperationFailed(f"{label}: {shown_text(repr(host))} is not a host to forward to")
        if type(port) is not int or not 1 <= port <= 65535:
            raise OperationFailed(f"{label}: {port!r} is not a TCP port to forward to")
        self.transport = transport
        self.host = host
        self.port = port
        self.label = label
        self.max_connections = max_connections
        self.open_timeout = open_timeout
        self.socket_dir = socket_dir
        #: the Unix socket listened on (with socket_dir), removed on close
        self.socket_path: Path | None = None
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._joints: set[_Joint] = set()
        self._errors: collections.deque[str] = collections.deque(maxlen=ERRORS_KEPT)
        self._closing = False
        self.local_port = 0

    # -- listening --------------------------------------------------------------------

    def open(self) -> int:
        """Listen, and return the local port."""
        if not self.transport.is_active():
            raise OperationFailed(f"{self.label}: the SSH connection is closed; cannot forward")
        if self.socket_dir is not None:
            listener = self._listen_unix(self.socket_dir)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.bind((LISTEN_HOST, 0))
                listener.listen(self.max_connections)
            except OSError as exc:
                listener.close()
                raise OperationFailed(
                    f"{self.label}: cannot listen on {LISTEN_HOST} for a forward: {exc}"
                ) from None
            self.local_port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, name="forward-accept", daemon=True)
        self._acceptor.start()
        return self.local_port

    def _listen_unix(self, folder: Path) -> socket.socket:
        try:
            st = os.lstat(folder)
        except OSError as exc:
            raise OperationFailed(
                f"{self.label}: cannot use {folder} for a forward: {exc}"
            ) from None
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077:
            raise OperationFailed(
                f"{self.label}: {folder} must be a folder only its owner may enter "
                "(mode 0700, not a link) to hold a forward's socket"
            )
        path = folder / f".s.PGSQL.{self.port}"
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise OperationFailed(
                f"{self.label}: {path} is longer than a Unix socket path may be "
                f"({MAX_SOCKET_PATH} bytes); use a shorter folder"
            )
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
        except OSError as exc:
            listener.close()
            raise OperationFailed(
                f"{self.label}: cannot listen on {path} for a forward: {exc}"
            ) from None
        self.socket_path = path
        try:
            # Connecting takes write permission on the socket: the folder's owner's.
            os.chown(path, st.st_uid, st.st_gid)
            os.chmod(path, 0o600)
            listener.listen(self.max_connections)
        except OSError as exc:
            listener.close()
            path.unlink(missing_ok=True)
            raise OperationFailed(
                f"{self.label}: cannot listen on {path} for a forward: {exc}"
            ) from None
        self.local_port = self.port
        return listener

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                sock, peer = listener.accept()
            except OSError:
                return  # the listener was closed: the forward ends
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                origin = peer[:2]
            else:
                origin = _UNIX_ORIGIN
            joint = _Joint(self, sock, origin)
            with self._lock:
                admitted = not self._closing and len(self._joints) < self.max_connections
                if admitted:
                    self._joints.add(joint)
            if admitted:
                joint.start()
                continue
            if not self._closing:
                self.failed(f"more than {self.max_connections} connections at once")
            sock.close()

    # -- connections ------------------------------------------------------------------

    def failed(self, why: str) -> None:
        text = (
            f"{self.label}: a forwarded connection to {self.host}:{self.port} there was "
            f"closed: {shown_text(why, 200)}"
        )
        with self._lock:
            self._errors.append(text)
        event(log, logging.WARNING, "forwarded connection closed", site=self.label, why=why)

    def forget(self, joint: _Joint) -> None:
        with self._lock:
            self._joints.discard(joint)

    @property
    def errors(self) -> list[str]:
        """Why recent connections were closed, oldest first (the last few)."""
        with self._lock:
            return list(self._errors)

    @property
    def active(self) -> int:
        """Connections forwarded now."""
        with self._lock:
            return len(self._joints)

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening, close every forwarded connection, wait for their threads."""
        with self._lock:
            self._closing = True
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown wakes the accept blocked in the other thread; close alone does not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self.socket_path is not None:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
        if self._acceptor is not None:
            self._acceptor.join(JOIN_TIMEOUT_S)
        with self._lock:
            joints = list(self._joints)
        for joint in joints:
            joint.stop()
        for joint in joints:
            joint.join(JOIN_TIMEOUT_S)

    def __enter__(self) -> LocalForward:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def local_forward(
    client: paramiko.SSHClient,
    host: str,
    port: int,
    *,
    label: str,
    max_connections: int = MAX_CONNECTIONS,
    socket_dir: Path | None = None,
) -> Iterator[int]:
    """The local port of a forward through `client` (an open SSH connection to the
    site, as `logship.ship.sftp.open_client` makes) to `host:port` there; the
    forward closes on the way out, the connection stays open. With `socket_dir`,
    on a Unix socket there (see LocalForward)."""
    transport = client.get_transport()
    if transport is None:
        raise OperationFailed(f"{label}: the SSH connection is closed; cannot forward")
    with LocalForward(
        transport,
        host,
        port,
        label=label,
        max_connections=max_connections,
        socket_dir=socket_dir,
    ) as forward:
        yield forward.local_port
