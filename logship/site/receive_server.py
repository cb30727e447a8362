"""`site-receive` at the site: the only writes a restricted primary can make.

Confined to one connector's folder (`<site root>/<connector>/`, from the site's
own config), held open as a descriptor. Every path is resolved from it one
component at a time with O_NOFOLLOW | O_DIRECTORY: a symlink planted at the
site, by anyone, ends the request instead of leading it elsewhere, and a
folder renamed meanwhile cannot redirect a later step.

A new file is written to an exclusive, unpredictable temp in its folder,
fsynced, checked against the size and sha256 the primary announced, made
read-only, and hard-linked to its final name: link(2) never replaces, so a file
that is already durable here can never be overwritten. The same content again
is a success (a retry after a lost reply); other content is refused.

Nothing here removes, renames, truncates or chmods a final file; the protocol
has no such request (see logship.site.gate_protocol). Only temps are ever
unlinked: the ones this server makes, and stale ones at its start (see
logship.site_temps).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from logship.site import gate_protocol as gp
from logship.site_temps import sweep_connector_temps
from logship.temp_names import is_temp_name, temp_name

#: the files a primary may append to (Transport.append_durably's callers)
APPEND_ONLY = frozenset({"generations.jsonl"})
#: the folders a primary writes into (SiteLayout): shipped WAL, its records, base
#: backups, consistency points. What the site writes itself (PROMOTED,
#: restored.json, refused/, drills/, a drill's scratch copy) the primary may read,
#: never create: a forged marker, note or drill result could mislead the site.
WRITE_ROOTS = frozenset({"wal", "manifest", "base", "consistency"})
#: a temp untouched this long belongs to no upload in flight
STALE_TEMP_S = 600.0
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Refused(Exception):
    """One request refused; the stream goes on."""


def split_path(path: Any, *, allow_root: bool = False) -> list[str]:
    """The components of a request's path, each a plain name; Refused otherwise."""
    if not isinstance(path, str):
        raise Refused("path must be a string")
    if path == "" and allow_root:
        return []
    if len(path.encode("utf-8", "surrogateescape")) > gp.PATH_MAX:
        raise Refused("path too long")
    if path.startswith("/"):
        raise Refused(f"refused path {path!r}: absolute")
    parts = path.split("/")
    if len(parts) > gp.DEPTH_MAX:
        raise Refused(f"refused path {path!r}: too deep")
    for part in parts:
        if part in ("", ".", "..") or "\0" in part or is_temp_name(part):
            raise Refused(f"refused path {path!r}")
        if len(part.encode("utf-8", "surrogateescape")) > gp.NAME_MAX:
            raise Refused(f"refused path {path!r}: a name is too long")
    return parts


def _writable(path: Any) -> list[str]:
    """A path the primary may create: below one of WRITE_ROOTS."""
    parts = split_path(path)
    if parts[0] not in WRITE_ROOTS:
        raise Refused(
            f"refused path {path!r}: the primary writes only into {', '.join(sorted(WRITE_ROOTS))}"
        )
    return parts


def _why(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


class ConnectorFolder:
    """Operations on one connector's folder, all relative to its held descriptor."""

    def __init__(self, site_root: str, connector: str) -> None:
        # The site root comes from the site's own config, which its admin wrote:
        # it may be reached through links. Below it, nothing is followed.
        root = os.open(site_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(connector, 0o700, dir_fd=root)
            self.fd = os.open(connector, _DIR, dir_fd=root)
        finally:
            os.close(root)

    def close(self) -> None:
        os.close(self.fd)

    @contextlib.contextmanager
    def _folder(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """The folder `parts` as a descriptor (FileNotFoundError when missing)."""
        fd = os.dup(self.fd)
        try:
            for part in parts:
                if create:
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                        os.fsync(fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise Refused(f"{'/'.join(parts)}: {part!r} is not a folder") from None
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    # -- requests --------------------------------------------------------------

    def mkdirs(self, path: Any) -> dict[str, Any]:
        with self._folder(_writable(path), create=True):
            return {}

    def stat(self, path: Any) -> dict[str, Any]:
        parts = split_path(path, allow_root=True)
        try:
            if not parts:
                return {"mode": os.fstat(self.fd).st_mode}
            with self._folder(parts[:-1]) as folder:
                return {"mode": os.stat(parts[-1], dir_fd=folder, follow_symlinks=False).st_mode}
        except FileNotFoundError:
            return {"mode": None}

    def listdir(self, path: Any) -> bytes:
        """The names as a JSON list, as data: a WAL folder holds thousands."""
        try:
            with self._folder(split_path(path, allow_root=True)) as folder:
                names = os.listdir(folder)
        except FileNotFoundError:
            names = []
        # Temps are this server's own business, never a shipped file.
        return json.dumps(sorted(n for n in names if not is_temp_name(n))).encode()

    def statvfs(self, path: Any) -> dict[str, Any]:
        split_path(path, allow_root=True)
        vfs = os.fstatvfs(self.fd)
        return {"free": vfs.f_bavail * vfs.f_frsize}

    def read(self, path: Any) -> tuple[dict[str, Any], bytes]:
        parts = split_path(path)
        try:
            with self._folder(parts[:-1]) as folder:
                fd = os.open(parts[-1], _READ, dir_fd=folder)
        except FileNotFoundError:
            return {"missing": True}, b""
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused(f"{path}: a symlink, not a file") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise Refused(f"{path}: not a regular file")
            if info.st_size > gp.MAX_READ:
                raise Refused(f"{path}: {info.st_size} bytes, more than READ answers")
            chunks = []
            while chunk := os.read(fd, 1024 * 1024):
                chunks.append(chunk)
                if sum(map(len, chunks)) > gp.MAX_READ:
                    raise Refused(f"{path}: grew past what READ answers")
            return {}, b"".join(chunks)
        finally:
            os.close(fd)

    def append(self, path: Any, data: bytes) -> dict[str, Any]:
        parts = split_path(path)
        if len(parts) != 1 or parts[0] not in APPEND_ONLY:
            raise Refused(f"refused append to {path!r}: not one of the site's append-only logs")
        try:
            fd = os.open(parts[0], _APPEND, 0o600, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Refused(f"{path}: a symlink, not a file") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Refused(f"{path}: not a regular file")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(self.fd)
        return {}

    def begin_put(self, path: Any) -> Upload:
        parts = _writable(path)
        if len(parts) < 2:
            raise Refused(f"refused path {path!r}: files go into {', '.join(sorted(WRITE_ROOTS))}")
        with self._folder(parts[:-1]) as folder:
            return Upload(os.dup(folder), parts[-1], path)

    def sweep_stale_temps(self, now: float | None = None) -> int:
        """Remove temps an upload cut short left behind (kill -9, a lost link).

        Each write moves a temp's mtime: one of this scheme untouched for
        STALE_TEMP_S belongs to no upload in flight here or in another
        connection's server (see logship.site_temps for the rest).
        """
        moment = time.time() if now is None else now
        return sweep_connector_temps(self.fd, moment, older_than=STALE_TEMP_S)


class Upload:
    """One PUT in flight: its exclusive temp, the bytes so far."""

    def __init__(self, folder: int, name: str, path: str) -> None:
        self._folder = folder
        self._name = name
        self.path = path
        self._temp = temp_name()
        self._digest = hashlib.sha256()
        self._size = 0
        self._fd: int | None = None
        try:
            self._fd = os.open(self._temp, _TEMP, 0o600, dir_fd=folder)
        except BaseException:
            os.close(folder)
            raise

    def write(self, data: bytes) -> None:
        assert self._fd is not None
        self._digest.update(data)
        self._size += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def finish(self, size: Any, sha256: Any) -> dict[str, Any]:
        """Verify, then link the temp to its final name; never replace it."""
        assert self._fd is not None
        if not isinstance(size, int) or not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
            raise Refused(f"{self.path}: END needs a size and a sha256")
        if size != self._size or sha256 != self._digest.hexdigest():
            raise Refused(
                f"{self.path}: received {self._size} bytes with sha256 "
                f"{self._digest.hexdigest()[:12]}…, not the {size} announced"
            )
        os.fsync(self._fd)
        os.fchmod(self._fd, 0o400)
        existed = False
        try:
            os.link(
                self._temp,
                self._name,
                src_dir_fd=self._folder,
                dst_dir_fd=self._folder,
                follow_symlinks=False,
            )
        except FileExistsError:
            if not self._same_as_final():
                raise Refused(
                    f"{self.path}: exists with different content; not replacing it"
                ) from None
            existed = True
        self.abort()  # the temp's name goes; the final name holds the inode
        return {"existed": existed}

    def _same_as_final(self) -> bool:
        try:
            fd = os.open(self._name, _READ, dir_fd=self._folder)
        except OSError:
            return False  # a symlink or something unreadable: not the same file
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != self._size:
                return False
            digest = hashlib.sha256()
            while chunk := os.read(fd, 1024 * 1024):
                digest.update(chunk)
            return digest.hexdigest() == self._digest.hexdigest()
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Drop the temp (the final name, if linked, stays) and make it durable."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp, dir_fd=self._folder)
            os.fsync(self._folder)
        finally:
            os.close(self._folder)


class Server:
    """Answers one primary's requests on stdin/stdout until the stream ends."""

    def __init__(self, folder: ConnectorFolder) -> None:
        self._folder = folder
        self._upload: Upload | None = None
        #: why the PUT in flight failed: its DATA is read and dropped until END
        self._put_error: str | None = None

    def serve(self, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        stdout.write(gp.frame(gp.OK, {"ready": True}))
        stdout.flush()
        try:
            while True:
                request = gp.read_frame(stdin, gp.MAX_HEADER, gp.MAX_CHUNK)
                if request is None:
                    return
                reply = self._answer(*request)
                if reply is not None:
                    stdout.write(reply)
                    stdout.flush()
        finally:
            if self._upload is not None:
                self._upload.abort()  # the primary went away mid-file

    def _answer(self, kind: bytes, header: dict[str, Any], data: bytes) -> bytes | None:
        in_put = self._upload is not None or self._put_error is not None
        if kind not in gp.REQUESTS:
            raise gp.ProtocolError(f"unknown request {kind!r}")
        if in_put != (kind in (gp.DATA, gp.END)):
            raise gp.ProtocolError(f"request {kind!r} out of order")
        if data and kind not in (gp.DATA, gp.APPEND):
            raise gp.ProtocolError(f"request {kind!r} carries data")
        try:
            if kind == gp.DATA:
                self._data(data)
                return None
            if kind == gp.PUT:
                self._begin(header.get("path"))
                return None
            if kind == gp.END:
                return gp.frame(gp.OK, self._end(header))
            folder = self._folder
            path = header.get("path")
            if kind == gp.READ:
                head, content = folder.read(path)
                return gp.frame(gp.OK, head, content)
            if kind == gp.MKDIRS:
                return gp.frame(gp.OK, folder.mkdirs(path))
            if kind == gp.STAT:
                return gp.frame(gp.OK, folder.stat(path))
            if kind == gp.LISTDIR:
                return gp.frame(gp.OK, {}, folder.listdir(path))
            if kind == gp.STATVFS:
                return gp.frame(gp.OK, folder.statvfs(path))
            assert kind == gp.APPEND
            return gp.frame(gp.OK, folder.append(path, data))
        except Refused as exc:
            return gp.frame(gp.ERROR, {"error": str(exc)})
        except OSError as exc:
            return gp.frame(gp.ERROR, {"error": _why(exc)})

    def _begin(self, path: Any) -> None:
        try:
            self._upload = self._folder.begin_put(path)
        except Refused as exc:
            self._put_error = str(exc)
        except OSError as exc:
            self._put_error = f"{path}: {_why(exc)}"

    def _data(self, data: bytes) -> None:
        if self._upload is None:
            return  # the PUT was refused: its bytes go nowhere
        try:
            self._upload.write(data)
        except OSError as exc:
            self._put_error = f"{self._upload.path}: {_why(exc)}"
            self._upload.abort()
            self._upload = None

    def _end(self, header: dict[str, Any]) -> dict[str, Any]:
        upload, error = self._upload, self._put_error
        self._upload, self._put_error = None, None
        if upload is None:
            raise Refused(error or "END without PUT")
        try:
            return upload.finish(header.get("size"), header.get("sha256"))
        finally:
            upload.abort()


def run(site_root: str, connector: str, stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """The verb's body: 0 at a clean end, 1 (one line on stderr) on a broken stream."""
    folder = ConnectorFolder(site_root, connector)
    try:
        folder.sweep_stale_temps()
        Server(folder).serve(stdin, stdout)
    except gp.ProtocolError as exc:
        with contextlib.suppress(OSError):
            stdout.write(gp.frame(gp.ERROR, {"error": f"protocol error: {exc}", "fatal": True}))
            stdout.flush()
        print(f"logship site-receive: protocol error: {exc}", file=sys.stderr)
        return 1
    finally:
        folder.close()
    return 0
