"""SFTP to a site with paramiko: strict host keys, key auth, tuned for throughput.

Tuning measured on loopback: TCP_NODELAY, aes128-gcm first, 255 KiB write
requests (OpenSSH's limit) and pipelined writes take a durable upload from about
half of OpenSSH `sftp` to about its speed.
"""

from __future__ import annotations

import contextlib
import errno
import shlex
import socket
import stat
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from logship.config.model import SiteConfig
from logship.errors import ConfigError, OperationFailed
from logship.ship.sftp_replies import RemoteUpload, Replies, fsync_folders
from logship.ship.site_output import drain
from logship.ship.ssh_trust import (
    RefuseUnknown,
    UnknownHostKey,
    read_known_hosts,
    refusal,
    refuse_unprotected_key,
)
from logship.ship.transport import OUTPUT_LIMIT, READ_LIMIT, SiteOutputTooLarge
from logship.temp_names import temp_beside

PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


def _tuned_transport(sock: Any, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(sock, **kwargs)
    options = transport.get_security_options()
    supported = tuple(c for c in PREFERRED_CIPHERS if c in options.ciphers)
    options.ciphers = supported + tuple(c for c in options.ciphers if c not in supported)
    return transport


def _wire(path: PurePosixPath | bytes) -> str | bytes:
    """A path as paramiko sends it: bytes pass through untouched (any file name)."""
    return path if isinstance(path, bytes) else str(path)


class QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges every read at once.

    sshd turns Nagle's algorithm off only for a connection with a pty session, so
    on a connection that only forwards a port it holds a small write back until
    its previous one is acknowledged, and Linux delays that acknowledgement (up to
    40 ms). A streaming standby's walreceiver sends exactly that: a small reply
    after writing, another after flushing, and a synchronous commit waits for the
    second. Quick acknowledgements end the wait without asking anything of the
    site; Linux clears the mode again after a while, so it is set after each read.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def where(site: SiteConfig) -> str:
    return f"{site.user}@{site.host}:{site.port}"


def open_client(site: SiteConfig, *, quick_ack: bool = False) -> paramiko.SSHClient:
    """An authenticated SSH client; the host key must already be in known_hosts.
    `quick_ack`: for small request/reply traffic (see QuickAckSocket)."""
    if not site.known_hosts.is_file():
        raise ConfigError(
            f"sites.{site.name}.known_hosts: {site.known_hosts} does not exist "
            "(add the standby's host key, e.g. with ssh-keyscan, and verify its fingerprint)"
        )
    if not site.identity_file.is_file():
        raise ConfigError(f"sites.{site.name}.identity_file: {site.identity_file} does not exist")
    refuse_unprotected_key(site)
    known = read_known_hosts(site.known_hosts)
    client = paramiko.SSHClient()
    known.install(client)
    client.set_missing_host_key_policy(RefuseUnknown())
    try:
        sock = socket.create_connection((site.host, site.port), timeout=site.connect_timeout)
    except OSError as exc:
        raise OperationFailed(f"site {site.name}: cannot reach {where(site)}: {exc}") from None
    if quick_ack:
        sock = QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Data the site has not acknowledged for io_timeout ends the connection, also
    # when it stops reading (zero window): otherwise a write to a black hole blocks
    # for the kernel's 15 minutes of retries, deep inside paramiko.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(site.io_timeout * 1000))
    try:
        client.connect(
            site.host,
            port=site.port,
            username=site.user,
            key_filename=str(site.identity_file),
            look_for_keys=False,
            allow_agent=False,
            sock=sock,
            timeout=site.connect_timeout,
            banner_timeout=site.connect_timeout,
            auth_timeout=site.connect_timeout,
            transport_factory=_tuned_transport,
        )
    except (paramiko.BadHostKeyException, UnknownHostKey) as exc:
        client.close()
        sock.close()
        listed = isinstance(exc, paramiko.BadHostKeyException)
        raise refusal(site, known, exc.key, listed) from None
    except paramiko.SSHException as exc:
        client.close()
        sock.close()
        if isinstance(exc, paramiko.AuthenticationException):
            raise OperationFailed(
                f"site {site.name}: {where(site)} refused key {site.identity_file}: {exc}"
            ) from None
        raise OperationFailed(f"site {site.name}: SSH to {where(site)} failed: {exc}") from None
    except OSError as exc:
        client.close()
        sock.close()
        raise OperationFailed(f"site {site.name}: SSH to {where(site)} failed: {exc}") from None
    return client


class SftpTransport:
    """One SSH connection and SFTP session to a site."""

    def __init__(self, site: SiteConfig, client: paramiko.SSHClient | None = None) -> None:
        """Over `client` when given (a connection opened for something else, which
        its owner closes), else over a new connection of its own."""
        self.site = site
        self._client = client or open_client(site)
        self._sftp = self._client.open_sftp()
        # Every reply the site owes us comes within io_timeout, or the link is lost.
        self._sftp.get_channel().settimeout(site.io_timeout)
        self._dir_fsync = True

    @property
    def is_alive(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    @property
    def client(self) -> paramiko.SSHClient:
        """The SSH connection, for callers that open channels of their own."""
        return self._client

    @property
    def sftp(self) -> paramiko.SFTPClient:
        """The SFTP session, for callers that need bytes paths (file trees)."""
        return self._sftp

    def fsync_handle(self, handle: bytes) -> None:
        # paramiko has no public call for OpenSSH's fsync extension.
        self._sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle)

    def fsync_dirs(
        self, folders: Sequence[PurePosixPath | bytes], replies: Replies | None = None
    ) -> None:
        """Make new entries in `folders` durable (pipelined on `replies` when given);
        a server that refuses is remembered and not asked again."""
        if not self._dir_fsync or not folders:
            return
        wire = [_wire(folder) for folder in folders]
        if not fsync_folders(replies or Replies(self._sftp), wire):
            self._dir_fsync = False

    def put_atomic(self, path: PurePosixPath, chunks: Iterable[bytes]) -> int:
        # Unpredictable, and created exclusively (see RemoteUpload).
        tmp = temp_beside(path)
        try:
            # Big pipelined writes, each acknowledged before the rename; then close,
            # rename and the folder's fsync, in two round trips, not six (the
            # difference on a far link).
            with RemoteUpload(self._sftp, str(tmp)) as remote:
                written = remote.write_all(chunks)
                remote.finish()
                folder = str(path.parent) if self._dir_fsync else None
                if not remote.rename_durably(str(path), folder):
                    self._dir_fsync = False  # a server that cannot: not asked again
        except BaseException:
            self.remove_quietly(tmp)
            raise
        return written

    def append_durably(self, path: PurePosixPath, data: bytes) -> None:
        """Append `data` to a private log file, created when missing, and fsync it.

        OpenSSH's sftp-server opens with O_APPEND: the data lands at the end
        whatever the offset, so two writers never overwrite each other.
        """
        with self._sftp.open(str(path), "ab") as remote:
            remote.chmod(0o600)
            remote.write(data)
            remote.flush()
            self.fsync_handle(remote.handle)

    def free_bytes(self, path: PurePosixPath) -> int | None:
        # OpenSSH's statvfs extension; a server without it cannot tell.
        try:
            kind, msg = self._sftp._request(CMD_EXTENDED, "statvfs@openssh.com", str(path))
        except (OSError, paramiko.SSHException):
            return None
        if kind != CMD_EXTENDED_REPLY:
            return None
        _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
        return int(bavail * frsize)

    def remove_quietly(self, path: PurePosixPath | bytes) -> None:
        try:
            if self.is_alive:
                self._sftp.remove(_wire(path))
        except (OSError, paramiko.SSHException):
            pass

    def read_bytes(self, path: PurePosixPath) -> bytes | None:
        try:
            with self._sftp.open(str(path), "rb") as remote:
                data = remote.read(READ_LIMIT + 1)
                if len(data) > READ_LIMIT:
                    raise SiteOutputTooLarge(
                        f"site {self.site.name}: {path} is larger than {READ_LIMIT} bytes; "
                        "it is not a file logship wrote there"
                    )
                return data
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def stat_mode(self, path: PurePosixPath) -> int | None:
        try:
            return self._sftp.stat(str(path)).st_mode or 0
        except FileNotFoundError:
            return None

    def makedirs(self, path: PurePosixPath) -> None:
        missing: list[PurePosixPath] = []
        current = path
        while True:
            mode = self.stat_mode(current)
            if mode is not None:
                if not stat.S_ISDIR(mode):
                    raise OperationFailed(f"site {self.site.name}: {current} is not a directory")
                break
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for directory in reversed(missing):
            try:
                self._sftp.mkdir(str(directory), mode=0o700)
            except OSError:
                # SFTP reports an existing directory only as a generic "Failure": the
                # daemon and a base backup may create the same folder at once.
                mode = self.stat_mode(directory)
                if mode is None or not stat.S_ISDIR(mode):
                    raise

    def listdir(self, path: PurePosixPath) -> list[str]:
        try:
            return self._sftp.listdir(str(path))
        except FileNotFoundError:
            return []

    def remove(self, path: PurePosixPath) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._sftp.remove(str(path))

    def rmdir(self, path: PurePosixPath) -> None:
        try:
            self._sftp.rmdir(str(path))
        except FileNotFoundError:
            pass
        except OSError:
            # SFTP reports most rmdir failures as a generic "Failure": a folder
            # that is gone meanwhile is not one.
            if self.stat_mode(path) is not None:
                raise

    def run_command(
        self, argv: list[str], timeout: float, limit: int = OUTPUT_LIMIT
    ) -> tuple[int, bytes, bytes]:
        # The remote side gets a shell string: every argument is quoted, and the
        # arguments come from the config, never from file names.
        stdin, stdout, _ = self._client.exec_command(shlex.join(argv), timeout=timeout)
        what = f"site {self.site.name}: `{shlex.join(argv[-3:])}`"
        # stdin stays open until the command ends: closing it (as dropping the last
        # reference does) ends a command run with --stop-when-stdin-closes.
        try:
            return drain(stdout.channel, limit, timeout, what)
        finally:
            stdin.close()

    def close(self) -> None:
        # Closing the SSH connection ends the SFTP session with it. A goodbye on the
        # SFTP channel first could block for good on a stalled link.
        self._client.close()
