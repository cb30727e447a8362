"""A mirror root at a site over SFTP, addressed with bytes paths.

File names may be any bytes but "/" and NUL, so every path stays bytes from the
scan to the wire (paramiko passes bytes through unchanged) and none is ever
part of a shell command. Every change lands atomically: a temp name in the same
directory, fsync, then posix-rename over the final name, then fsync the
directory.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import PurePosixPath

import paramiko
from paramiko.sftp import CMD_CLOSE, CMD_HANDLE, CMD_NAME, CMD_OPENDIR, CMD_READDIR
from paramiko.sftp_attr import SFTPAttributes

from logship.ship.sftp import SftpTransport
from logship.tree.names import TEMP_PREFIX
from logship.tree.scan import READ_CHUNK
from logship.tree.ship import SourceChanged


def temp_name(name: bytes) -> bytes:
    # One fixed temp per final name: a retry reuses it, so an upload cut short
    # leaves at most one leftover, which the next upload of that path replaces.
    # Hashed to stay within NAME_MAX whatever the name's length.
    return TEMP_PREFIX + hashlib.sha256(name).hexdigest()[:16].encode()


def _missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or exc.errno == 2


class SftpTreeSite:
    """File operations below `root` at the site; paths are relative bytes."""

    def __init__(self, transport: SftpTransport, root: PurePosixPath) -> None:
        self._transport = transport
        self._sftp = transport.sftp
        self._root = os.fsencode(str(root))

    def _abs(self, relative: bytes) -> bytes:
        return self._root + b"/" + relative if relative else self._root

    def _temp_for(self, relative: bytes) -> bytes:
        parent, _, name = relative.rpartition(b"/")
        return self._abs(parent + b"/" + temp_name(name) if parent else temp_name(name))

    def _parent(self, relative: bytes) -> bytes:
        return self._abs(relative.rpartition(b"/")[0])

    # -- reading -----------------------------------------------------------------

    def lstat(self, relative: bytes) -> SFTPAttributes | None:
        try:
            return self._sftp.lstat(self._abs(relative))
        except OSError as exc:
            if _missing(exc):
                return None
            raise

    def listdir(self, relative: bytes) -> list[bytes]:
        """Names in a folder as bytes (paramiko's own listdir decodes them as UTF-8)."""
        kind, msg = self._sftp._request(CMD_OPENDIR, self._abs(relative))
        if kind != CMD_HANDLE:
            raise paramiko.SFTPError("expected a handle")
        handle = msg.get_binary()
        names: list[bytes] = []
        try:
            while True:
                try:
                    kind, msg = self._sftp._request(CMD_READDIR, handle)
                except EOFError:
                    break
                if kind != CMD_NAME:
                    raise paramiko.SFTPError("expected names")
                for _ in range(msg.get_int()):
                    name = msg.get_string()
                    msg.get_string()  # the long form, unused
                    SFTPAttributes._from_msg(msg)
                    if name not in (b".", b".."):
                        names.append(name)
        finally:
            self._sftp._request(CMD_CLOSE, handle)
        return names

    # -- writing -----------------------------------------------------------------

    def ensure_root(self) -> None:
        self._transport.makedirs(PurePosixPath(os.fsdecode(self._root)))

    def put_file(
        self,
        relative: bytes,
        local: bytes,
        *,
        unchanged: Callable[[os.stat_result, os.stat_result], bool],
    ) -> tuple[str, int, os.stat_result]:
        """Upload `local` (an absolute path) to `relative`: (sha256, size, lstat shipped).

        Mode and mtime are set on the temp before the rename. `unchanged(before,
        after)` judges the source's lstat from before and after the upload; when
        it says no, the temp is removed and SourceChanged raised.
        """
        temp = self._temp_for(relative)
        fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as source:
            before = os.fstat(source.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise SourceChanged("no longer a regular file")
            digest = hashlib.sha256()
            size = 0
            try:
                with self._transport.open_for_upload(temp) as remote:
                    while chunk := source.read(READ_CHUNK):
                        digest.update(chunk)
                        remote.write(chunk)
                        size += len(chunk)
                    remote.flush()
                    # The server handles requests in order, so these land after
                    # the last write, and the one fsync covers them too.
                    remote.chmod(stat.S_IMODE(before.st_mode))
                    remote.utime((int(before.st_atime), int(before.st_mtime)))
                    self._transport.finish_upload(remote)
                after = os.lstat(local)
                if size != before.st_size or not unchanged(before, after):
                    raise SourceChanged("changed while being uploaded")
                self._rename_into_place(temp, relative)
            except BaseException:
                self._transport.remove_quietly(temp)
                raise
        self._transport.fsync_dir(self._parent(relative))
        return digest.hexdigest(), size, before

    def put_symlink(self, relative: bytes, target: bytes) -> None:
        """A link with `target` at `relative`, never followed at either end."""
        temp = self._temp_for(relative)
        self._transport.remove_quietly(temp)
        # paramiko sends (target, link path), the order OpenSSH's server expects.
        self._sftp.symlink(target, temp)
        try:
            self._rename_into_place(temp, relative)
        except BaseException:
            self._transport.remove_quietly(temp)
            raise
        self._transport.fsync_dir(self._parent(relative))

    def make_dir(self, relative: bytes, mode: int) -> None:
        path = self._abs(relative)
        found = self.lstat(relative)
        if found is not None and not stat.S_ISDIR(found.st_mode or 0):
            self.remove(relative)
            found = None
        if found is None:
            self._sftp.mkdir(path, mode=0o700)
            self._transport.fsync_dir(self._parent(relative))
        # The mode is set outright: mkdir's is subject to the server's umask.
        self._sftp.chmod(path, mode)

    def set_dir_times(self, relative: bytes, mtime_ns: int) -> None:
        seconds = mtime_ns // 1_000_000_000
        self._sftp.utime(self._abs(relative), (seconds, seconds))

    def remove(self, relative: bytes) -> None:
        """Remove whatever is at `relative` (a folder with all it holds); gone is fine."""
        found = self.lstat(relative)
        if found is None:
            return
        if stat.S_ISDIR(found.st_mode or 0):
            for name in self.listdir(relative):
                self.remove(relative + b"/" + name if relative else name)
            self._sftp.rmdir(self._abs(relative))
        else:
            self._sftp.remove(self._abs(relative))
        self._transport.fsync_dir(self._parent(relative))

    def remove_temp(self, relative: bytes) -> None:
        self._transport.remove_quietly(self._temp_for(relative))

    def _rename_into_place(self, temp: bytes, relative: bytes) -> None:
        try:
            self._sftp.posix_rename(temp, self._abs(relative))
        except OSError:
            # rename(2) will not replace a folder with a file or link: the path
            # was a folder before, whose removal has not reached the site yet.
            found = self.lstat(relative)
            if found is None or not stat.S_ISDIR(found.st_mode or 0):
                raise
            self.remove(relative)
            self._sftp.posix_rename(temp, self._abs(relative))
