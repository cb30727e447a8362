"""A mirror root at a site over SFTP, addressed with bytes paths.

File names may be any bytes but "/" and NUL, so every path stays bytes from the
scan to the wire (paramiko passes bytes through unchanged) and none is ever
part of a shell command. Every change lands atomically: a temp name in the same
directory, fsync, then posix-rename over the final name, then fsync the
directory.

Small files also go in batches pipelined on the one SFTP channel (see
`put_files`): the per-file round trips, not the bytes, are what a tree of small
files costs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import stat
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_READ,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from logship.logs import event
from logship.ship.sftp import SftpTransport
from logship.tree.names import TEMP_PREFIX
from logship.tree.scan import READ_CHUNK
from logship.tree.ship import Shipped, SourceChanged

log = logging.getLogger("logship.tree")

#: a batched file is read whole into memory: a file grown past this since it
#: was recorded is left for the streaming path
BATCH_READ_MAX = 4 * 1024 * 1024
SYNC_TIMEOUT_S = 120.0


_CHUNK = 255 * 1024  # OpenSSH's largest write request


def _before(outcome: object) -> os.stat_result:
    assert isinstance(outcome, Shipped)
    return outcome.before


def temp_name(name: bytes) -> bytes:
    # One fixed temp per final name: a retry reuses it, so an upload cut short
    # leaves at most one leftover, which the next upload of that path replaces.
    # Hashed to stay within NAME_MAX whatever the name's length.
    return TEMP_PREFIX + hashlib.sha256(name).hexdigest()[:16].encode()


def _missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or exc.errno == 2


class _Replies:
    """Requests sent on the SFTP channel without waiting; replies collected later.

    The OpenSSH server answers requests in order, so many files' opens, writes,
    setstats and closes can be on the wire at once: one round trip per phase of
    a batch instead of several per file. Replies are small (a status or a
    handle), so thousands fit in the channel's window without being read.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp = sftp
        self._got: dict[int, tuple[int, Message]] = {}

    def send(self, kind: int, *args: object) -> int:
        return int(self._sftp._async_request(self, kind, *args))

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        # paramiko hands over every reply addressed to this object here.
        self._got[num] = (kind, msg)

    def _wait(self, num: int) -> tuple[int, Message]:
        while num not in self._got:
            self._sftp._read_response()
        return self._got.pop(num)

    def status(self, num: int) -> OSError | None:
        """The error a status reply carries, None for OK."""
        kind, msg = self._wait(num)
        if kind != CMD_STATUS:
            return OSError(f"unexpected SFTP reply {kind}")
        try:
            self._sftp._convert_status(msg)
        except OSError as exc:
            return exc
        except EOFError as exc:
            return OSError(str(exc))
        return None

    def handle(self, num: int) -> bytes | OSError:
        kind, msg = self._wait(num)
        if kind == CMD_HANDLE:
            return msg.get_binary()
        if kind == CMD_STATUS:
            try:
                self._sftp._convert_status(msg)
            except (OSError, EOFError) as exc:
                return OSError(str(exc))
        return OSError(f"unexpected SFTP reply {kind}")


class SftpTreeSite:
    """File operations below `root` at the site; paths are relative bytes."""

    def __init__(self, transport: SftpTransport, root: PurePosixPath) -> None:
        self._transport = transport
        self._sftp = transport.sftp
        self._root = os.fsencode(str(root))
        self._root_text = str(root)
        # None until tried: whether `sync -f` runs at the site (see _syncfs).
        self._syncfs_works: bool | None = None

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

    def put_files(
        self,
        files: Sequence[tuple[bytes, bytes]],
        *,
        unchanged: Callable[[os.stat_result, os.stat_result], bool],
    ) -> list[Shipped | Exception]:
        """Upload small files (relative, local) as one batch; an outcome for each.

        The same guarantees as `put_file`, in phases pipelined over all files:
        each is written to its temp name (mode and mtime set), the temps are made
        durable, renamed over the final names, and the renames made durable
        before this returns. Durability comes from one `sync -f ROOT` (syncfs of
        the site's file system, run through the SSH exec channel with only the
        configured root as argument) before and one after the renames; a site
        where that cannot run gets an fsync of each temp and of each touched
        folder instead, pipelined too. A file that fails or changed while being
        read gets its exception (SourceChanged, OSError) and leaves no temp; a
        failure of the link itself is raised.
        """
        outcomes: list[Shipped | Exception] = []
        contents: dict[int, bytes] = {}
        for index, (_, local) in enumerate(files):
            try:
                data, before = self._read_small(local)
            except (OSError, SourceChanged) as exc:
                outcomes.append(exc)
                continue
            contents[index] = data
            outcomes.append(Shipped(hashlib.sha256(data).hexdigest(), len(data), before))
        fsync_each = not self._syncfs_usable()
        replies = _Replies(self._sftp)
        temps = {i: self._temp_for(files[i][0]) for i in contents}
        opens = {}
        private = SFTPAttributes()
        private.st_mode = 0o600  # the server's umask can only narrow it
        for i, temp in temps.items():
            flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC
            opens[i] = replies.send(CMD_OPEN, temp, flags, private)
        handles: dict[int, bytes] = {}
        for i, num in opens.items():
            found = replies.handle(num)
            if isinstance(found, OSError):
                outcomes[i] = found
            else:
                handles[i] = found
        pending: dict[int, list[int]] = {}
        for i, handle in handles.items():
            data, before = contents[i], _before(outcomes[i])
            nums = [
                replies.send(CMD_WRITE, handle, int64(offset), data[offset : offset + _CHUNK])
                for offset in range(0, len(data), _CHUNK)
            ]
            attrs = SFTPAttributes()
            attrs.st_mode = stat.S_IMODE(before.st_mode)
            attrs.st_atime, attrs.st_mtime = int(before.st_atime), int(before.st_mtime)
            nums.append(replies.send(CMD_FSETSTAT, handle, attrs))
            if fsync_each:
                nums.append(replies.send(CMD_EXTENDED, "fsync@openssh.com", handle))
            pending[i] = nums
        closes = {i: replies.send(CMD_CLOSE, handle) for i, handle in handles.items()}
        for i, nums in pending.items():
            errors = [replies.status(num) for num in nums]
            errors.append(replies.status(closes[i]))
            failed = next((e for e in errors if e is not None), None)
            if failed is not None:
                outcomes[i] = failed
                continue
            # The source must not have moved while it was read (as in put_file).
            try:
                after = os.lstat(files[i][1])
            except OSError as exc:
                outcomes[i] = exc
                continue
            if not unchanged(_before(outcomes[i]), after):
                outcomes[i] = SourceChanged("changed while being uploaded")
        ready = [i for i in handles if isinstance(outcomes[i], Shipped)]
        self._drop_temps(replies, [temps[i] for i in temps if i not in ready])
        if not ready:
            return outcomes
        if not fsync_each:
            self._syncfs()  # the temps' data and metadata, before any rename
        renames = {
            i: replies.send(
                CMD_EXTENDED, "posix-rename@openssh.com", temps[i], self._abs(files[i][0])
            )
            for i in ready
        }
        for i, num in renames.items():
            failed = replies.status(num)
            if failed is None:
                continue
            try:
                # A folder in the way, or another reason put_file would handle.
                self._rename_into_place(temps[i], files[i][0])
            except OSError as exc:
                self._transport.remove_quietly(temps[i])
                outcomes[i] = exc
        if fsync_each:
            folders = {self._parent(files[i][0]) for i in ready}
            self._fsync_dirs(replies, sorted(folders))
        else:
            self._syncfs()  # the renames
        return outcomes

    def _read_small(self, local: bytes) -> tuple[bytes, os.stat_result]:
        fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as source:
            before = os.fstat(source.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise SourceChanged("no longer a regular file")
            if before.st_size > BATCH_READ_MAX:
                raise SourceChanged("grew past the batch size")
            data = source.read(BATCH_READ_MAX + 1)
        if len(data) != before.st_size:
            raise SourceChanged("changed while being read")
        return data, before

    def _drop_temps(self, replies: _Replies, temps: Sequence[bytes]) -> None:
        nums = [replies.send(CMD_REMOVE, temp) for temp in temps]
        for num in nums:
            replies.status(num)  # gone already is fine

    def _fsync_dirs(self, replies: _Replies, folders: Sequence[bytes]) -> None:
        if not self._transport.dir_fsync_supported:
            return
        # As fsync_dir does, one request at a time: the server opens a folder
        # with open(2), and one that refuses is remembered and not asked again.
        opens = [replies.send(CMD_OPEN, f, SFTP_FLAG_READ, SFTPAttributes()) for f in folders]
        found = [replies.handle(num) for num in opens]
        handles = [h for h in found if isinstance(h, bytes)]
        fsyncs = [replies.send(CMD_EXTENDED, "fsync@openssh.com", h) for h in handles]
        closes = [replies.send(CMD_CLOSE, h) for h in handles]
        refused = len(handles) < len(found)
        refused |= any(replies.status(num) is not None for num in fsyncs)
        for num in closes:
            replies.status(num)
        if refused:
            self._transport.dir_fsync_refused()

    def _syncfs_usable(self) -> bool:
        if self._syncfs_works is None:
            try:
                self._syncfs()
                self._syncfs_works = True
            except OSError as exc:
                self._syncfs_works = False
                event(
                    log,
                    logging.INFO,
                    "no sync -f at the site: fsync per file",
                    root=self._root_text,
                    error=str(exc),
                )
        return self._syncfs_works

    def _syncfs(self) -> None:
        """syncfs(2) of the file system holding the mirror root, at the site."""
        argv = ["sync", "-f", self._root_text]
        try:
            code, _, err = self._transport.run_command(argv, SYNC_TIMEOUT_S)
        except paramiko.SSHException as exc:
            if not self._transport.is_alive:
                raise
            raise OSError(f"{shlex.join(argv)}: {exc}") from None
        if code != 0:
            detail = err.decode(errors="replace")[-300:]
            raise OSError(f"{shlex.join(argv)} exited {code}: {detail}")

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
