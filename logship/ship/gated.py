"""The Transport to a restricted site: `site-receive` over SSH exec channels, no SFTP.

The key the primary holds for such a site is a forced command (`site-gate`,
see logship.site.gate): it opens no SFTP session and no shell. Each connector's
folder is reached through one long-lived `site-receive <connector>` channel,
opened on first use. A file is one PUT, its chunks and an END sent back to back,
answered once: one round trip per file, whatever its size.

What changes against SftpTransport: `put_atomic` never replaces (the site links
the new file to its final name and refuses other content under a name already
taken); `remove` and `rmdir` raise RestrictedError (retention runs at the site);
`run_command` runs only the site commands the gate allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import struct
import threading
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

import paramiko

from logship.config.model import SiteConfig
from logship.errors import OperationFailed, printable
from logship.ship.sftp import SftpTransport, open_client
from logship.ship.site_output import drain
from logship.ship.transport import (
    OUTPUT_LIMIT,
    READ_LIMIT,
    RestrictedError,
    SiteOutputTooLarge,
    SiteRefused,
)
from logship.site import gate_protocol as gp

#: the first words of the commands the gate lets through
ALLOWED_COMMANDS = frozenset({"standby", "drill", "--version"})
_HEAD = struct.Struct(">II")


class _Session:
    """One `site-receive` channel: requests and replies in order (one user at a time)."""

    def __init__(self, client: paramiko.SSHClient, site: SiteConfig, connector: str) -> None:
        self.lock = threading.Lock()
        self._site = site
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise OperationFailed(f"site {site.name}: the SSH connection is closed")
        self._channel = transport.open_session(timeout=site.io_timeout)
        self._channel.settimeout(site.io_timeout)
        self._channel.exec_command(shlex.join(["site-receive", connector]))
        self._replies = self._channel.makefile("rb")
        try:
            ready, _ = self.reply()
        except OperationFailed:
            self.close()
            raise
        if ready.get("ready") is not True:
            self.close()
            raise OperationFailed(f"site {site.name}: site-receive did not say it is ready")

    def send(self, kind: bytes, header: dict[str, Any] | None = None, data: bytes = b"") -> None:
        head = json.dumps(header or {}, allow_nan=False).encode()
        self._channel.sendall(kind + _HEAD.pack(len(head), len(data)) + head)
        if data:
            self._channel.sendall(data)

    def reply(self) -> tuple[dict[str, Any], bytes]:
        try:
            answer = gp.read_frame(self._replies, gp.MAX_HEADER, gp.MAX_READ)
        except gp.ProtocolError as exc:
            raise OperationFailed(f"site {self._site.name}: site-receive: {exc}") from None
        if answer is None:
            raise OperationFailed(
                f"site {self._site.name}: site-receive ended: {self._stderr_line()}"
            )
        kind, header, data = answer
        if kind == gp.ERROR:
            error = str(header.get("error", "refused"))[:500]
            if header.get("fatal"):
                raise OperationFailed(f"site {self._site.name}: {error}")
            raise SiteRefused(f"site {self._site.name}: {error}")
        if kind != gp.OK:
            raise OperationFailed(f"site {self._site.name}: site-receive sent {kind!r}")
        return header, data

    def _stderr_line(self) -> str:
        with contextlib.suppress(Exception):
            # The exit status comes after stderr: then all of it is here.
            self._channel.status_event.wait(self._site.io_timeout)
            text = b""
            while self._channel.recv_stderr_ready() and len(text) < 65536:
                text += self._channel.recv_stderr(4096)
            lines = text.decode("utf-8", "replace").splitlines()
            if lines:
                return printable(lines[-1][:500])
        return "no answer (is the key's forced command `site-gate`, and logship installed?)"

    def request(self, kind: bytes, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        self.send(kind, header)
        return self.reply()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.close()


class GatedTransport:
    """A restricted site, one SSH connection; see the module's docstring."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self._client = open_client(site)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    @property
    def is_alive(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def _where(self, path: PurePosixPath) -> tuple[str, str]:
        """(connector, path inside its folder) of a path at the site."""
        try:
            parts = PurePosixPath(path).relative_to(self.site.root).parts
        except ValueError:
            parts = ()
        if not parts:
            raise RestrictedError(
                f"refused: {path} is outside the connector folders under {self.site.root} "
                "(the site is in restricted mode)"
            )
        return parts[0], "/".join(parts[1:])

    def _session(self, connector: str) -> _Session:
        with self._lock:
            session = self._sessions.get(connector)
            if session is None:
                session = _Session(self._client, self.site, connector)
                self._sessions[connector] = session
            return session

    def _drop(self, connector: str, session: _Session) -> None:
        """A channel whose stream state is unknown (a PUT cut short) is closed;
        the site drops the temp, and the next request opens a new one."""
        session.close()
        with self._lock:
            if self._sessions.get(connector) is session:
                del self._sessions[connector]

    @contextlib.contextmanager
    def _exchange(self, path: PurePosixPath) -> Iterator[tuple[_Session, str]]:
        """The connector's session, held for one request and its reply, and the
        path inside the connector. A refusal leaves the stream in step; anything
        else leaves it unknown, so the session is dropped."""
        connector, inside = self._where(path)
        session = self._session(connector)
        with session.lock:
            try:
                yield session, inside
            except SiteRefused:
                raise
            except BaseException:
                self._drop(connector, session)
                raise

    def _ask(self, kind: bytes, path: PurePosixPath) -> tuple[dict[str, Any], bytes]:
        with self._exchange(path) as (session, inside):
            return session.request(kind, {"path": inside})

    # -- Transport -------------------------------------------------------------

    def put_atomic(self, path: PurePosixPath, chunks: Iterable[bytes]) -> int:
        """Write a NEW file complete or not at all; never replaces one.

        A name already there with the same content is a success (a retry);
        with other content, SiteRefused ("exists with different content").
        """
        digest = hashlib.sha256()
        size = 0
        with self._exchange(path) as (session, inside):
            session.send(gp.PUT, {"path": inside})
            for chunk in chunks:
                for start in range(0, len(chunk), gp.MAX_CHUNK):
                    piece = chunk[start : start + gp.MAX_CHUNK]
                    digest.update(piece)
                    size += len(piece)
                    session.send(gp.DATA, None, bytes(piece))
            session.send(gp.END, {"size": size, "sha256": digest.hexdigest()})
            session.reply()
        return size

    def append_durably(self, path: PurePosixPath, data: bytes) -> None:
        with self._exchange(path) as (session, inside):
            session.send(gp.APPEND, {"path": inside}, data)
            session.reply()

    def read_bytes(self, path: PurePosixPath) -> bytes | None:
        header, data = self._ask(gp.READ, path)
        if header.get("missing"):
            return None
        if len(data) > READ_LIMIT:
            raise SiteOutputTooLarge(
                f"site {self.site.name}: {path} is over {READ_LIMIT} bytes; not read"
            )
        return data

    def stat_mode(self, path: PurePosixPath) -> int | None:
        mode = self._ask(gp.STAT, path)[0].get("mode")
        return mode if isinstance(mode, int) else None

    def makedirs(self, path: PurePosixPath) -> None:
        if PurePosixPath(path) in (self.site.root, *self.site.root.parents):
            return  # the site made its root; site-receive makes the connector's folder
        connector, inside = self._where(path)
        if inside:
            self._ask(gp.MKDIRS, path)
        else:
            self._session(connector)  # opening it makes the connector's folder

    def listdir(self, path: PurePosixPath) -> list[str]:
        data = self._ask(gp.LISTDIR, path)[1]
        try:
            names = json.loads(data)
        except (ValueError, RecursionError):
            raise OperationFailed(
                f"site {self.site.name}: site-receive listed {path} badly"
            ) from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise OperationFailed(f"site {self.site.name}: site-receive listed {path} badly")
        return names

    def remove(self, path: PurePosixPath) -> None:
        raise RestrictedError(
            f"refused: cannot remove {path}: the site is in restricted mode; "
            "retention runs at the site"
        )

    def rmdir(self, path: PurePosixPath) -> None:
        raise RestrictedError(
            f"refused: cannot remove {path}: the site is in restricted mode; "
            "retention runs at the site"
        )

    def free_bytes(self, path: PurePosixPath) -> int | None:
        try:
            free = self._ask(gp.STATVFS, path)[0].get("free")
        except SiteRefused:
            return None
        return free if isinstance(free, int) else None

    def run_command(
        self, argv: list[str], timeout: float, limit: int = OUTPUT_LIMIT
    ) -> tuple[int, bytes, bytes]:
        """Only a command the site's gate allows; the site's own logship and
        config run it, so the configured `command` prefix is not sent."""
        prefix = list(self.site.command)
        words = argv[len(prefix) :] if argv[: len(prefix)] == prefix else list(argv)
        if not words or words[0] not in ALLOWED_COMMANDS:
            raise RestrictedError(
                f"refused: {shlex.join(argv)}: the site is in restricted mode and runs "
                "only logship's own site commands"
            )
        stdin, stdout, _ = self._client.exec_command(shlex.join(words), timeout=timeout)
        what = f"site {self.site.name}: `{shlex.join(words[-3:])}`"
        # stdin stays open until the command ends: closing it (as dropping the last
        # reference does) ends a command run with --stop-when-stdin-closes.
        try:
            return drain(stdout.channel, limit, timeout, what)
        finally:
            stdin.close()

    def close(self) -> None:
        self._client.close()


__all__ = ["GatedTransport", "RestrictedError", "SiteRefused", "connect"]


def connect(site: SiteConfig) -> GatedTransport | SftpTransport:
    """The Transport for `site`: GatedTransport when it is restricted, else SFTP."""
    if site.restricted:
        return GatedTransport(site)
    return SftpTransport(site)
