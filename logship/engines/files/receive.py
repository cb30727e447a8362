"""`tree-receive` at the site: batches of files from the stream, landed atomically.

Each file is written to a new temp in its folder (created exclusively under
an unpredictable name: see logship.temp_names), mode and mtime set.
On commit: one syncfs of the target's file system, every rename, one more
syncfs, then one reply line per file. A file that cannot be written gets an
error line and leaves no temp; the batch goes on.

Two threads make a pipeline: the reader writes the temps of the next batch
while the committer syncs and renames the batch before it (syncfs and the
file operations wait on the disk and the kernel, not on Python). When the
next batch is already waiting, a batch's second syncfs is the next batch's
first: one syncfs makes both the renames and the new temps durable, and the
batch's replies follow it.

A path is checked before use: relative, no empty, "." or ".." component. Its
folder is then opened one component at a time, each below the descriptor of
the one before, from a descriptor of the target held for the receiver's life,
never following a link (openat with O_NOFOLLOW | O_DIRECTORY). The temp is
created, written and renamed relative to that folder's descriptor, which the
batch holds until its renames: a link at the site, there before or swapped in
meanwhile, can never lead a write outside the target folder. Nothing of a folder's
resolution is kept from one file to the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import queue
import resource
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from logship.engines.files.modes import SITE_STRIPPED
from logship.engines.files.names import show_path
from logship.engines.files.stream import COMMIT, FileFrame, landed_line, read_frame, reply_line
from logship.temp_names import files_temp_name, is_files_temp_name

#: a batch file is read whole: bigger files go over SFTP, streamed
MAX_FILE = 8 * 1024 * 1024
#: a temp untouched this long is a leftover (see Receiver.sweep_stale_temps)
STALE_TEMP_S = 600.0
#: a temp is always new: never an existing file or link truncated and written through
_CREATE_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: a folder on a path's way: never a link, never anything but a folder
_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: descriptors a receiver may hold: each batch holds one per folder it writes in
#: (up to BATCH_FILES) until its renames, and a few batches can be in flight
WANTED_FILES = 16384


def _libc_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True).syncfs if name else None
    except (OSError, AttributeError):
        return None


def _more_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_FILES if hard == resource.RLIM_INFINITY else min(WANTED_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Receiver:
    def __init__(self, target: Path) -> None:
        self._target = target
        self._root = os.fsencode(target)
        # The target itself is the site's configuration (it may be a link an
        # administrator made); everything below it is resolved from here.
        self._root_fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._syncfs = _libc_syncfs()
        _more_descriptors()

    def serve(self, stdin: IO[bytes], stdout: IO[bytes], *, sweep: bool = True) -> None:
        stdout.write(reply_line({"ready": True}))
        stdout.flush()
        if sweep:
            # Beside the batches, not before the answer: on a large tree the walk
            # takes longer than the files connector waits for a receiver to come up. A
            # batch's temps are new, so the sweep never takes one of them.
            threading.Thread(target=self.sweep_stale_temps, name="sweep", daemon=True).start()
        committer = _Committer(self, stdout)
        batch = _Batch()
        try:
            while not committer.failed:
                frame = read_frame(stdin, MAX_FILE)
                if frame is None:
                    break
                if frame == COMMIT:
                    committer.commit(batch)
                    batch = _Batch()
                else:
                    assert isinstance(frame, FileFrame)
                    batch.files.append(self._write(frame, batch))
        finally:
            committer.finish()
            # The client went away mid-batch: nothing of it was renamed into place.
            for written in batch.files:
                if written.error is None:
                    _remove(written.folder, written.temp)
            batch.close()

    def sweep_stale_temps(self, now: float | None = None) -> int:
        """Remove temps an upload cut short left behind, once no upload can own them.

        A temp is replaced by the next upload of its path, but a path deleted
        at the source meanwhile is never uploaded again. Each write, chmod and
        utime moves a file's ctime, so a temp untouched for STALE_TEMP_S
        belongs to no upload in flight (over SFTP or this stream).
        """
        cutoff = (time.time() if now is None else now) - STALE_TEMP_S
        swept = 0
        # By descriptor, links never followed: a folder swapped for a link
        # during the walk cannot lead an unlink outside the target folder.
        root = os.dup(self._root_fd)
        try:
            for _, _, names, folder_fd in os.fwalk(".", dir_fd=root):
                for name in names:
                    if not is_files_temp_name(os.fsencode(name)):
                        continue
                    with contextlib.suppress(OSError):
                        st = os.lstat(name, dir_fd=folder_fd)
                        if st.st_ctime < cutoff:
                            os.unlink(name, dir_fd=folder_fd)
                            swept += 1
        finally:
            os.close(root)
        return swept

    def open_folder(self, parent: bytes) -> int:
        """A new descriptor of the folder `parent` (relative, checked): each
        component opened below the one before, never through a link."""
        fd = os.dup(self._root_fd)
        try:
            for name in parent.split(b"/") if parent else ():
                below = os.open(name, _OPEN_FOLDER, dir_fd=fd)
                os.close(fd)
                fd = below
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write(self, frame: FileFrame, batch: _Batch) -> _Written:
        path = frame.path
        parent, _, name = path.rpartition(b"/")
        # No empty, "." or ".." component, not absolute: checked on the whole
        # path at once (this runs for every file of a first sync).
        framed = b"/" + path + b"/"
        if b"//" in framed or b"/./" in framed or b"/../" in framed:
            return _Written.refused(f"refused path {path!r}")
        if b"\0" in path or is_files_temp_name(name):
            return _Written.refused(f"refused path {path!r}")
        try:
            folder = batch.hold(self.open_folder(parent))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return _Written.refused(
                    f"{show_path(path)}: a folder on its way is a link or not a folder at "
                    "the site; refused (a write never goes outside the mirror root)"
                )
            return _Written.refused(f"{type(exc).__name__}: {exc.strerror or exc}")
        temp = files_temp_name()
        try:
            fd = os.open(temp, _CREATE_TEMP, 0o600, dir_fd=folder)
            try:
                data = frame.data
                written = os.write(fd, data)
                if written < len(data):
                    view = memoryview(data)[written:]
                    while view:
                        view = view[os.write(fd, view) :]
                # Whatever the sender asked for, never setuid, setgid or sticky here.
                os.fchmod(fd, stat.S_IMODE(frame.mode) & ~SITE_STRIPPED)
                os.utime(fd, ns=(frame.mtime_ns, frame.mtime_ns))
            finally:
                os.close(fd)
        except OSError as exc:
            _remove(folder, temp)
            return _Written(folder, temp, name, f"{type(exc).__name__}: {exc.strerror or exc}")
        return _Written(folder, temp, name, None)

    def sync(self) -> None:
        """syncfs(2) of the target's file system; sync(2) where there is none."""
        if self._syncfs is None:
            os.sync()
            return
        if self._syncfs(self._root_fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")

    def rename_all(self, batch: _Batch) -> list[str | None]:
        """Every written temp of `batch` renamed over its final name, in the folder
        it was written in; each one's error."""
        errors = [written.error for written in batch.files]
        for index, written in enumerate(batch.files):
            if written.error is not None:
                continue
            try:
                folder = written.folder
                os.rename(written.temp, written.name, src_dir_fd=folder, dst_dir_fd=folder)
            except OSError as exc:
                # A folder in the way (its removal has not come yet): the
                # client retries the file later.
                _remove(written.folder, written.temp)
                errors[index] = f"{type(exc).__name__}: {exc.strerror or exc}"
        return errors


@dataclass(frozen=True)
class _Written:
    """A file of a batch: its folder's descriptor (-1: none), temp, final name,
    and its error (None: the temp is written)."""

    folder: int
    temp: bytes
    name: bytes
    error: str | None

    @classmethod
    def refused(cls, error: str) -> _Written:
        return cls(-1, b"", b"", error)


@dataclass
class _Batch:
    """A batch's files, and the descriptors of the folders they are written in,
    held until the batch is renamed. A folder opened again for a later file
    of the batch is the same folder when its device and inode are: the new
    descriptor is closed and the held one used (a held descriptor cannot be
    redirected; only how a path resolves can)."""

    files: list[_Written] = field(default_factory=list)
    _held: dict[tuple[int, int], int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    def hold(self, fd: int) -> int:
        st = os.fstat(fd)
        held = self._held.setdefault((st.st_dev, st.st_ino), fd)
        if held != fd:
            os.close(fd)
        return held

    def close(self) -> None:
        held, self._held = self._held, {}
        for fd in held.values():
            os.close(fd)


class _Committer:
    """The committer thread: syncs, renames and answers batches in order."""

    def __init__(self, receiver: Receiver, stdout: IO[bytes]) -> None:
        self._receiver = receiver
        self._stdout = stdout
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def commit(self, batch: _Batch) -> None:
        self._batches.put(batch)

    def finish(self) -> None:
        """Commit what was handed over, then stop; a failure of the thread is raised."""
        self._batches.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._commit_all()
        except BaseException as exc:
            self._error = exc
            # No more answers: the client sees the stream end and ships over
            # SFTP, and the reader stops at the next frame.
            with contextlib.suppress(OSError):
                self._stdout.close()

    def _commit_all(self) -> None:
        synced = self._receiver.sync
        unanswered: list[str | None] | None = None  # renamed, not yet synced
        while (batch := self._batches.get()) is not None:
            if any(written.error is None for written in batch.files) or unanswered is not None:
                synced()  # this batch's temps, and the renames of the one before
            if unanswered is not None:
                self._answer(unanswered)
                unanswered = None
            try:
                errors = self._receiver.rename_all(batch)
            finally:
                batch.close()
            if not self._batches.empty() and any(error is None for error in errors):
                unanswered = errors  # the next batch's first syncfs covers these renames
                continue
            if any(error is None for error in errors):
                synced()  # the renames
            self._answer(errors)
        if unanswered is not None:
            synced()
            self._answer(unanswered)

    def _answer(self, errors: list[str | None]) -> None:
        lines = [
            landed_line(index) if error is None else reply_line({"i": index, "error": error})
            for index, error in enumerate(errors)
        ]
        lines.append(reply_line({"done": len(errors)}))
        self._stdout.write(b"".join(lines))
        self._stdout.flush()


def _remove(folder: int, temp: bytes) -> None:
    if temp:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=folder)
