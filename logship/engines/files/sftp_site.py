"""A files connector's target folder at a site over SFTP, addressed with bytes paths.

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

import contextlib
import errno
import hashlib
import logging
import os
import shlex
import stat
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_LSTAT,
    CMD_MKDIR,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READDIR,
    CMD_REMOVE,
    CMD_SETSTAT,
)
from paramiko.sftp_attr import SFTPAttributes

from logship.engines.files.modes import site_mode
from logship.engines.files.names import show_path
from logship.engines.files.scan import READ_CHUNK
from logship.engines.files.ship import BatchFile, BatchUpload, SourceChanged
from logship.engines.files.stream import file_frame
from logship.engines.files.stream_sender import BatchStream
from logship.logs import event
from logship.ship.sftp import SftpTransport
from logship.ship.sftp_replies import (
    NEW_FILE,
    WRITE_REQUEST_SIZE,
    RemoteUpload,
    Replies,
    missing,
)
from logship.temp_names import keyed_files_temp_name

log = logging.getLogger("logship.files")

SYNC_TIMEOUT_S = 120.0
#: `tree-receive` processes per connection, batches taking turns: one writes
#: its temps while the other syncs and renames (the file system's work runs on
#: two cores; see docs/benchmarks.md, files_vs_rsync)
RECEIVERS = 2


class SftpFilesSite:
    """File operations below `root` at the site; paths are relative bytes."""

    def __init__(
        self,
        transport: SftpTransport,
        root: PurePosixPath,
        receiver: list[str] | None = None,
    ) -> None:
        self._transport = transport
        self._sftp = transport.sftp
        self._root = os.fsencode(str(root))
        self._root_text = str(root)
        # None until tried: whether `sync -f` runs at the site (see _syncfs).
        self._syncfs_works: bool | None = None
        #: how to start `tree-receive` at the site; None: SFTP alone
        self._receiver = receiver
        self._streams: list[BatchStream] = []
        self._turn = 0

    def close(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            # The connection may be going away with it.
            with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                stream.close()

    def launch_receiver(self) -> None:
        """Start the `tree-receive`s at the site now; the first batch waits for them."""
        if self._streams or self._receiver is None:
            return
        try:
            for n in range(RECEIVERS):
                # One of them sweeps stale temps at its start; one sweep is enough.
                argv = self._receiver if n == 0 else [*self._receiver, "--no-sweep"]
                self._streams.append(
                    BatchStream.launch(
                        self._transport.client, argv, self._transport.site.io_timeout
                    )
                )
        except (OSError, paramiko.SSHException) as exc:
            self.close()
            self._no_receiver(exc)

    def _batch_stream(self) -> BatchStream | None:
        """The receiver whose turn it is, once it is up; None when there is none."""
        self.launch_receiver()
        while self._streams:
            stream = self._streams[self._turn % len(self._streams)]
            self._turn += 1
            try:
                stream.wait_ready()
                return stream
            except (OSError, paramiko.SSHException) as exc:
                # The others may be up (an older logship at the site rejects the
                # second one's --no-sweep): batches go to those.
                self._streams.remove(stream)
                with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
                    stream.close()
                if not self._streams:
                    self._no_receiver(exc)
        return None

    def _no_receiver(self, exc: Exception) -> None:
        if not self._transport.is_alive:
            raise exc
        event(
            log,
            logging.INFO,
            "no tree-receive at the site: batches over SFTP",
            root=self._root_text,
            error=str(exc),
        )
        self._receiver = None

    def _send_streamed(self, stream: BatchStream, files: Sequence[BatchFile]) -> BatchUpload:
        frames = [file_frame(f.relative, f.mode, f.before.st_mtime_ns, f.data) for f in files]
        try:
            stream.send_batch(frames)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self._stream_broke(exc)
            return _Done(self._put_over_sftp(files))
        return _StreamedBatch(self, stream, files)

    def _stream_broke(self, exc: Exception) -> None:
        """Batches go over SFTP from now on; the link itself failing is raised."""
        if not self._transport.is_alive:
            raise exc
        if self._streams:
            event(log, logging.WARNING, "tree-receive broke: SFTP", error=str(exc))
            self.close()
        self._receiver = None

    def _abs(self, relative: bytes) -> bytes:
        return self._root + b"/" + relative if relative else self._root

    def _temp_for(self, relative: bytes) -> bytes:
        parent = relative.rpartition(b"/")[0]
        temp = keyed_files_temp_name(relative)
        return self._abs(parent + b"/" + temp if parent else temp)

    def _parent(self, relative: bytes) -> bytes:
        return self._abs(relative.rpartition(b"/")[0])

    # -- the folders above a path ------------------------------------------------

    def _send_lstats(self, replies: Replies, paths: Sequence[bytes]) -> dict[bytes, int]:
        return {path: replies.send(CMD_LSTAT, self._abs(path)) for path in paths}

    def _not_folders(self, replies: Replies, sent: dict[bytes, int]) -> dict[bytes, OSError]:
        """Of the lstats `sent`, the paths that are not real folders at the site, each
        with why: FileNotFoundError, NotADirectoryError (a link, a file) or the error."""
        refused: dict[bytes, OSError] = {}
        for path, num in sent.items():
            found = replies.attrs(num)
            if isinstance(found, OSError):
                refused[path] = found
            elif found is None:
                refused[path] = FileNotFoundError(
                    errno.ENOENT, f"{show_path(path)} at the site: no such folder"
                )
            elif not stat.S_ISDIR(found.st_mode or 0):
                refused[path] = NotADirectoryError(
                    errno.ENOTDIR,
                    f"{show_path(path)} at the site is not a folder (a link or a file): "
                    "nothing is written, removed or changed below it",
                )
        return refused

    def _blocked(self, replies: Replies, paths: Sequence[bytes]) -> list[OSError | None]:
        """For each path, why a folder above it (below the root) is not a real folder
        at the site, None when every one is.

        SFTP resolves a path by name and follows links: without this, a link the
        files connector shipped earlier, where a folder now belongs, would lead a write
        wherever it points. Looked at before every write, removal and setstat,
        all of a call's folders in one pipelined round trip. (A local user at the
        site who can write inside the target folder could still swap a folder between
        this lstat and the write; `tree-receive` resolves without that gap.)
        """
        sent = self._send_lstats(replies, sorted({a for p in paths for a in _ancestors(p)}))
        refused = self._not_folders(replies, sent)
        return [next((refused[a] for a in _ancestors(p) if a in refused), None) for p in paths]

    def _check_folders(self, relative: bytes) -> None:
        """Raise when a folder above `relative` is not a real folder at the site."""
        (error,) = self._blocked(Replies(self._sftp), [relative])
        if error is not None:
            raise error

    # -- reading -----------------------------------------------------------------

    def lstat(self, relative: bytes) -> SFTPAttributes | None:
        try:
            return self._sftp.lstat(self._abs(relative))
        except OSError as exc:
            if missing(exc):
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
        keep_write_bits: bool = False,
    ) -> tuple[str, int, os.stat_result]:
        """Upload `local` (an absolute path) to `relative`: (sha256, size, lstat shipped).

        Mode (masked: see logship.engines.files.modes) and mtime are set on the temp
        before the rename. `unchanged(before,
        after)` judges the source's lstat from before and after the upload; when
        it says no, the temp is removed and SourceChanged raised.
        """
        self._check_folders(relative)
        temp = self._temp_for(relative)
        self._transport.remove_quietly(temp)  # a leftover of an earlier try
        fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as source:
            before = os.fstat(source.fileno())
            if not stat.S_ISREG(before.st_mode):
                raise SourceChanged("no longer a regular file")
            digest = hashlib.sha256()
            size = 0
            try:
                with RemoteUpload(self._sftp, temp) as remote:
                    while chunk := source.read(READ_CHUNK):
                        digest.update(chunk)
                        remote.write(chunk)
                        size += len(chunk)
                    # The server handles requests in order, so these land after
                    # the last write, and the one fsync covers them too.
                    attrs = SFTPAttributes()
                    attrs.st_mode = site_mode(
                        before.st_mode, folder=False, keep_write_bits=keep_write_bits
                    )
                    attrs.st_atime, attrs.st_mtime = int(before.st_atime), int(before.st_mtime)
                    remote.set_attrs(attrs)
                    remote.finish()
                after = os.lstat(local)
                if size != before.st_size or not unchanged(before, after):
                    raise SourceChanged("changed while being uploaded")
                self._rename_into_place(temp, relative)
            except BaseException:
                self._transport.remove_quietly(temp)
                raise
        self._transport.fsync_dirs([self._parent(relative)])
        return digest.hexdigest(), size, before

    def start_files(self, files: Sequence[BatchFile]) -> BatchUpload:
        """Send a batch of small files read whole; `finish` once it is durable.

        Through `tree-receive` at the site the batch is one stream of frames,
        and the next batch can be sent before this one is answered. Over SFTP
        (no receiver, or it broke) the same guarantees as `put_file`, in phases
        pipelined over all files, before this returns: each file is written to
        its temp name (mode and mtime set), the temps are made durable, renamed
        over the final names, and the renames made durable. Durability comes
        from one `sync -f ROOT` (syncfs of the site's file system, run through
        the SSH exec channel with only the configured root as argument) before
        and one after the renames; a site where that cannot run gets an fsync of
        each temp and of each touched folder instead, pipelined too. A file that
        fails gets its OSError and leaves no temp; a failure of the link itself
        is raised.
        """
        stream = self._batch_stream()
        if stream is not None:
            return self._send_streamed(stream, files)
        return _Done(self._put_over_sftp(files))

    def _put_over_sftp(self, files: Sequence[BatchFile]) -> list[OSError | None]:
        fsync_each = not self._syncfs_usable()
        replies = Replies(self._sftp)
        outcomes = self._blocked(replies, [f.relative for f in files])
        temps = [self._temp_for(f.relative) for f in files]
        private = SFTPAttributes()
        private.st_mode = 0o600  # the server's umask can only narrow it
        wanted = [i for i in range(len(files)) if outcomes[i] is None]
        # A leftover of an earlier try goes first (its reply is not waited for:
        # the server handles requests in order, and gone already is fine).
        dropped = [replies.send(CMD_REMOVE, temps[i]) for i in wanted]
        opens = {i: replies.send(CMD_OPEN, temps[i], NEW_FILE, private) for i in wanted}
        for num in dropped:
            replies.status(num)
        handles: dict[int, bytes] = {}
        for i, num in opens.items():
            found = replies.handle(num)
            if isinstance(found, OSError):
                outcomes[i] = found
            else:
                handles[i] = found
        pending: dict[int, list[int]] = {}
        for i, handle in handles.items():
            data, before = files[i].data, files[i].before
            nums = [
                replies.send_write(handle, offset, data[offset : offset + WRITE_REQUEST_SIZE])
                for offset in range(0, len(data), WRITE_REQUEST_SIZE)
            ]
            attrs = SFTPAttributes()
            attrs.st_mode = files[i].mode
            attrs.st_atime, attrs.st_mtime = int(before.st_atime), int(before.st_mtime)
            nums.append(replies.send(CMD_FSETSTAT, handle, attrs))
            if fsync_each:
                nums.append(replies.send(CMD_EXTENDED, "fsync@openssh.com", handle))
            pending[i] = nums
        closes = {i: replies.send(CMD_CLOSE, handle) for i, handle in handles.items()}
        for i, nums in pending.items():
            errors = [replies.status(num) for num in nums]
            errors.append(replies.status(closes[i]))
            outcomes[i] = next((e for e in errors if e is not None), None)
        ready = [i for i in handles if outcomes[i] is None]
        self._drop_temps(replies, [temps[i] for i in handles if outcomes[i] is not None])
        if not ready:
            return outcomes
        if not fsync_each:
            self._syncfs()  # the temps' data and metadata, before any rename
        renames = {
            i: replies.send(
                CMD_EXTENDED, "posix-rename@openssh.com", temps[i], self._abs(files[i].relative)
            )
            for i in ready
        }
        for i, num in renames.items():
            if replies.status(num) is None:
                continue
            try:
                # A folder in the way, or another reason put_file would handle.
                self._rename_into_place(temps[i], files[i].relative)
            except OSError as exc:
                self._transport.remove_quietly(temps[i])
                outcomes[i] = exc
        if fsync_each:
            folders = {self._parent(files[i].relative) for i in ready}
            self._transport.fsync_dirs(sorted(folders), replies)
        else:
            self._syncfs()  # the renames
        return outcomes

    def _drop_temps(self, replies: Replies, temps: Sequence[bytes]) -> None:
        nums = [replies.send(CMD_REMOVE, temp) for temp in temps]
        for num in nums:
            replies.status(num)  # gone already is fine

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
        """syncfs(2) of the file system holding the target folder, at the site."""
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
        self._check_folders(relative)
        temp = self._temp_for(relative)
        self._transport.remove_quietly(temp)
        # paramiko sends (target, link path), the order OpenSSH's server expects.
        self._sftp.symlink(target, temp)
        try:
            self._rename_into_place(temp, relative)
        except BaseException:
            self._transport.remove_quietly(temp)
            raise
        self._transport.fsync_dirs([self._parent(relative)])

    def make_dirs(self, folders: Sequence[tuple[bytes, int]]) -> list[OSError | None]:
        """Folders with their modes; what is in the way of one is removed first.

        Pipelined: every lstat at once (the folders and those above them that
        are not among them), then the folders one depth at a time (a parent
        exists before its children are asked for), their new entries made
        durable together, then every mode. A folder is never made or changed
        below one that is not a real folder at the site (see `_blocked`).
        Returns the error of each folder that could not be made, None for the
        others.
        """
        outcomes: list[OSError | None] = [None] * len(folders)
        replies = Replies(self._sftp)
        index = {relative: i for i, (relative, _) in enumerate(folders)}
        above = sorted({a for rel, _ in folders for a in _ancestors(rel) if a not in index})
        above_sent = self._send_lstats(replies, above)
        lstats = [replies.send(CMD_LSTAT, self._abs(relative)) for relative, _ in folders]
        refused = self._not_folders(replies, above_sent)
        found_at = [replies.attrs(num) for num in lstats]
        by_depth: dict[int, list[int]] = {}
        for i, (relative, _) in enumerate(folders):
            by_depth.setdefault(relative.count(b"/"), []).append(i)
        private = SFTPAttributes()
        private.st_mode = 0o700
        made: list[int] = []
        replaced: set[bytes] = set()  # made here: what was below them is gone
        for depth in sorted(by_depth):
            absent: list[int] = []
            for i in by_depth[depth]:
                relative = folders[i][0]
                blocked = self._blocked_by(relative, refused, index, outcomes)
                if blocked is not None:
                    outcomes[i] = blocked
                    continue
                found = found_at[i]
                if any(a in replaced for a in _ancestors(relative)):
                    found = None  # looked at through what was there before its parent
                if isinstance(found, OSError):
                    outcomes[i] = found
                    continue
                if found is not None and not stat.S_ISDIR(found.st_mode or 0):
                    try:
                        self._remove_entry(relative)
                    except OSError as exc:
                        outcomes[i] = exc
                        continue
                    found = None
                if found is None:
                    absent.append(i)
            nums = {i: replies.send(CMD_MKDIR, self._abs(folders[i][0]), private) for i in absent}
            for i, num in nums.items():
                failed = replies.status(num)
                if failed is not None and not self._is_dir(folders[i][0]):
                    outcomes[i] = failed  # a folder made meanwhile is fine
                else:
                    made.append(i)
                    replaced.add(folders[i][0])
        if made:
            if self._syncfs_usable():
                self._syncfs()
            else:
                parents = {self._parent(folders[i][0]) for i in made}
                self._transport.fsync_dirs(sorted(parents), replies)
        # Modes set outright: mkdir's is subject to the server's umask.
        chmods: dict[int, int] = {}
        for i, (relative, mode) in enumerate(folders):
            if outcomes[i] is None:
                attrs = SFTPAttributes()
                attrs.st_mode = mode
                chmods[i] = replies.send(CMD_SETSTAT, self._abs(relative), attrs)
        for i, num in chmods.items():
            outcomes[i] = replies.status(num)
        return outcomes

    @staticmethod
    def _blocked_by(
        relative: bytes,
        refused: dict[bytes, OSError],
        index: dict[bytes, int],
        outcomes: list[OSError | None],
    ) -> OSError | None:
        """Why `relative` cannot be made: a folder above it that is not a real folder
        at the site, or one of the same call that could not be made."""
        for above in _ancestors(relative):
            if above in refused:
                return refused[above]
            if above in index and outcomes[index[above]] is not None:
                return FileNotFoundError(
                    errno.ENOENT, f"{show_path(above)} at the site could not be made a folder"
                )
        return None

    def _is_dir(self, relative: bytes) -> bool:
        found = self.lstat(relative)
        return found is not None and stat.S_ISDIR(found.st_mode or 0)

    def set_dir_times(self, folders: Sequence[tuple[bytes, int]]) -> list[bool]:
        """Folder mtimes, pipelined; False for a folder that is gone, or below one
        that is not a real folder at the site (any other error is raised). Setting
        one folder's times never moves another's."""
        replies = Replies(self._sftp)
        blocked = self._blocked(replies, [relative for relative, _ in folders])
        nums: dict[int, int] = {}
        for i, (relative, mtime_ns) in enumerate(folders):
            if blocked[i] is not None:
                continue
            attrs = SFTPAttributes()
            attrs.st_atime = attrs.st_mtime = mtime_ns // 1_000_000_000
            nums[i] = replies.send(CMD_SETSTAT, self._abs(relative), attrs)
        outcomes = {i: replies.status(num) for i, num in nums.items()}
        failed = next((e for e in outcomes.values() if e is not None and not missing(e)), None)
        if failed is not None:
            raise failed
        return [i in outcomes and outcomes[i] is None for i in range(len(folders))]

    def remove(self, relative: bytes) -> None:
        """Remove whatever is at `relative` (a folder with all it holds); gone is fine.

        Below a link or a file at the site nothing of the target folder is at
        `relative`: nothing is removed, and the link is never followed.
        """
        if relative:
            try:
                self._check_folders(relative)
            except (FileNotFoundError, NotADirectoryError):
                return
        self._remove_entry(relative)

    def _remove_entry(self, relative: bytes) -> None:
        """`remove` once the folders above `relative` are known to be real folders."""
        found = self.lstat(relative)
        if found is None:
            return
        if stat.S_ISDIR(found.st_mode or 0):
            for name in self.listdir(relative):
                self._remove_entry(relative + b"/" + name if relative else name)
            self._sftp.rmdir(self._abs(relative))
        else:
            self._sftp.remove(self._abs(relative))
        self._transport.fsync_dirs([self._parent(relative)])

    def _rename_into_place(self, temp: bytes, relative: bytes) -> None:
        try:
            self._sftp.posix_rename(temp, self._abs(relative))
        except OSError:
            # rename(2) will not replace a folder with a file or link: the path
            # was a folder before, whose removal has not reached the site yet.
            found = self.lstat(relative)
            if found is None or not stat.S_ISDIR(found.st_mode or 0):
                raise
            self._remove_entry(relative)  # its folders were looked at before the upload
            self._sftp.posix_rename(temp, self._abs(relative))


def _ancestors(relative: bytes) -> list[bytes]:
    """The folders above `relative`, below the target folder, shallowest first."""
    parts = relative.split(b"/")
    return [b"/".join(parts[:depth]) for depth in range(1, len(parts))]


class _Done:
    """A batch that is durable already (it went over SFTP)."""

    def __init__(self, outcomes: list[OSError | None]) -> None:
        self._outcomes = outcomes

    def finish(self) -> list[OSError | None]:
        return self._outcomes


class _StreamedBatch:
    """A batch sent to `tree-receive`; its answers are read in `finish`."""

    def __init__(
        self, site: SftpFilesSite, stream: BatchStream, files: Sequence[BatchFile]
    ) -> None:
        self._site = site
        self._stream = stream
        self._files = files

    def finish(self) -> list[OSError | None]:
        try:
            errors = self._stream.collect(len(self._files))
        except (OSError, paramiko.SSHException, EOFError) as exc:
            # What the receiver did of this batch is unknown: all of it again,
            # over SFTP (landing a file twice is harmless).
            self._site._stream_broke(exc)
            return self._site._put_over_sftp(self._files)
        return [None if error is None else OSError(error) for error in errors]
