"""`tree-receive` at the site: batches of files from the stream, landed atomically.

Each file is written to its temp name in its folder (the same name the SFTP
path uses, so a leftover of either is replaced by the next upload), mode and
mtime set. On commit: one syncfs of the target's file system, every rename,
one more syncfs, then one reply line per file. A file that cannot be written
gets an error line and leaves no temp; the batch goes on.

Two threads make a pipeline: the reader writes the temps of the next batch
while the committer syncs and renames the batch before it (syncfs and the
file operations wait on the disk and the kernel, not on Python). When the
next batch is already waiting, a batch's second syncfs is the next batch's
first: one syncfs makes both the renames and the new temps durable, and the
batch's replies follow it.

A path is checked before use: relative, no empty, "." or ".." component, and
its folder, resolved, must lie inside the target: a symlink at the site can
never lead a write outside the mirror.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import queue
import stat
import threading
import time
from pathlib import Path
from typing import IO

from logship.tree.names import TEMP_PREFIX, temp_name
from logship.tree.stream import COMMIT, FileFrame, landed_line, read_frame, reply_line

#: a batch file is read whole: bigger files go over SFTP, streamed
MAX_FILE = 8 * 1024 * 1024
#: a temp untouched this long is a leftover (see Receiver.sweep_stale_temps)
STALE_TEMP_S = 600.0
_CREATE_TEMP = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def _libc_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True).syncfs if name else None
    except (OSError, AttributeError):
        return None


class Receiver:
    def __init__(self, target: Path) -> None:
        self._target = target
        self._root = os.fsencode(target)
        self._real_root = os.path.realpath(self._root)
        self._syncfs = _libc_syncfs()
        self._folders: dict[bytes, bool] = {}  # folder -> inside the target

    def serve(self, stdin: IO[bytes], stdout: IO[bytes], *, sweep: bool = True) -> None:
        stdout.write(reply_line({"ready": True}))
        stdout.flush()
        if sweep:
            # Beside the batches, not before the answer: on a large tree the walk
            # takes longer than the mirror waits for a receiver to come up. A
            # batch's temps are new, so the sweep never takes one of them.
            threading.Thread(target=self.sweep_stale_temps, name="sweep", daemon=True).start()
        committer = _Committer(self, stdout)
        batch: list[_Written] = []
        try:
            while not committer.failed:
                frame = read_frame(stdin, MAX_FILE)
                if frame is None:
                    break
                if frame == COMMIT:
                    committer.commit(batch)
                    batch = []
                    self._folders.clear()  # the tree may change between batches
                else:
                    assert isinstance(frame, FileFrame)
                    batch.append(self._write(frame))
        finally:
            committer.finish()
        # The client went away mid-batch: nothing of it was renamed into place.
        for temp, _, error in batch:
            if error is None:
                _remove(temp)

    def sweep_stale_temps(self, now: float | None = None) -> int:
        """Remove temps an upload cut short left behind, once no upload can own them.

        A temp is replaced by the next upload of its path, but a path deleted
        at the source meanwhile is never uploaded again. Each write, chmod and
        utime moves a file's ctime, so a temp untouched for STALE_TEMP_S
        belongs to no upload in flight (over SFTP or this stream).
        """
        cutoff = (time.time() if now is None else now) - STALE_TEMP_S
        swept = 0
        for folder, _, names in os.walk(self._root):
            for name in names:
                if not name.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_ctime < cutoff:
                        os.unlink(path)
                        swept += 1
        return swept

    def _inside(self, folder: bytes) -> bool:
        known = self._folders.get(folder)
        if known is None:
            real = os.path.realpath(folder)
            known = real == self._real_root or real.startswith(self._real_root + b"/")
            self._folders[folder] = known
        return known

    def _write(self, frame: FileFrame) -> _Written:
        path = frame.path
        parent, _, name = path.rpartition(b"/")
        # No empty, "." or ".." component, not absolute: checked on the whole
        # path at once (this runs for every file of a first sync).
        framed = b"/" + path + b"/"
        if b"//" in framed or b"/./" in framed or b"/../" in framed:
            return b"", b"", f"refused path {path!r}"
        if b"\0" in path or name.startswith(TEMP_PREFIX):
            return b"", b"", f"refused path {path!r}"
        folder = self._root + b"/" + parent if parent else self._root
        final = folder + b"/" + name
        temp = folder + b"/" + temp_name(name)
        try:
            if not self._inside(folder):
                return b"", b"", f"{path!r}: its folder leads outside the mirror root"
            fd = os.open(temp, _CREATE_TEMP, 0o600)
            try:
                data = frame.data
                written = os.write(fd, data)
                if written < len(data):
                    view = memoryview(data)[written:]
                    while view:
                        view = view[os.write(fd, view) :]
                os.fchmod(fd, stat.S_IMODE(frame.mode))
                os.utime(fd, ns=(frame.mtime_ns, frame.mtime_ns))
            finally:
                os.close(fd)
        except OSError as exc:
            _remove(temp)
            return temp, final, f"{type(exc).__name__}: {exc.strerror or exc}"
        return temp, final, None

    def sync(self) -> None:
        """syncfs(2) of the target's file system; sync(2) where there is none."""
        if self._syncfs is None:
            os.sync()
            return
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if self._syncfs(fd) != 0:
                raise OSError(ctypes.get_errno(), "syncfs failed")
        finally:
            os.close(fd)

    def rename_all(self, batch: list[_Written]) -> list[str | None]:
        """Every written temp of `batch` renamed over its final name; each one's error."""
        errors = [error for _, _, error in batch]
        for index, (temp, final, error) in enumerate(batch):
            if error is not None:
                continue
            try:
                os.rename(temp, final)
            except OSError as exc:
                # A folder in the way (its removal has not come yet): the
                # client retries the file later.
                _remove(temp)
                errors[index] = f"{type(exc).__name__}: {exc.strerror or exc}"
        return errors


#: a written file of a batch: temp, final name, error (None: the temp is written)
_Written = tuple[bytes, bytes, "str | None"]


class _Committer:
    """The committer thread: syncs, renames and answers batches in order."""

    def __init__(self, receiver: Receiver, stdout: IO[bytes]) -> None:
        self._receiver = receiver
        self._stdout = stdout
        self._batches: queue.SimpleQueue[list[_Written] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        return self._error is not None

    def commit(self, batch: list[_Written]) -> None:
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
            if any(error is None for _, _, error in batch) or unanswered is not None:
                synced()  # this batch's temps, and the renames of the one before
            if unanswered is not None:
                self._answer(unanswered)
                unanswered = None
            errors = self._receiver.rename_all(batch)
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


def _remove(path: bytes) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.unlink(path)
