"""SFTP requests in flight, each reply checked: what paramiko's pipelining lacks.

paramiko's pipelined `SFTPFile.write` files its requests under no owner, and
a reply that arrives while something else waits is dropped: a write the
server refused (a full disk) goes unnoticed, and the fsync that follows
succeeds on a short file. Here every request belongs to a `Replies`, which
keeps its replies until they are asked for, so no error is lost whoever reads
the channel.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from collections.abc import Iterable, Sequence

import paramiko
from paramiko.message import Message
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

#: queued requests are sent once this many bytes wait (two SSH packets' worth)
FLUSH_AT = 64 * 1024
#: OpenSSH's largest write request
WRITE_REQUEST_SIZE = 255 * 1024
#: writes of one upload in flight at most (16 MiB): memory stays bounded
MAX_WRITES_IN_FLIGHT = 64


_NO_ATTRS = SFTPAttributes()
#: how every temp at the site is opened: created new or not at all, never an
#: existing file truncated or a planted link followed
NEW_FILE = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL


def missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError) or exc.errno == 2


class Replies:
    """Requests sent on the SFTP channel without waiting; replies collected later.

    The OpenSSH server answers requests in order, so many files' opens, writes,
    setstats and closes can be on the wire at once: one round trip per phase of
    a batch instead of several per file. Replies are small (a status or a
    handle), so thousands fit in the channel's window without being read.
    """

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self._sftp = sftp
        self._got: dict[int, tuple[int, Message]] = {}
        self._out = bytearray()

    def send(self, kind: int, *args: object) -> int:
        """Queue one request; it goes out with the next `flush` (or a wait for a reply).

        Built as paramiko's `_async_request` builds it, but not sent alone: one
        SSH packet per small request costs more CPU than the data of a small
        file, so requests leave in packets of up to FLUSH_AT bytes.
        """
        num = self._register()
        msg = Message()
        msg.add_int(num)
        for item in args:
            if isinstance(item, int64):
                msg.add_int64(item)
            elif isinstance(item, int):
                msg.add_int(item)
            elif isinstance(item, SFTPAttributes):
                item._pack(msg)
            else:
                msg.add_string(item)
        body = msg.asbytes()
        self._queue(struct.pack(">IB", len(body) + 1, kind) + body)
        return num

    def send_write(self, handle: bytes, offset: int, data: bytes) -> int:
        """A write request, built in one join: a 255 KiB payload is copied once here,
        not four times as through paramiko's Message."""
        num = self._register()
        size = 1 + 4 + 4 + len(handle) + 8 + 4 + len(data)  # type, id, handle, offset, data
        head = struct.pack(">IBII", size, CMD_WRITE, num, len(handle))
        self._queue(b"".join((head, handle, struct.pack(">QI", offset, len(data)), data)))
        return num

    def _register(self) -> int:
        """A request number whose reply paramiko hands to this object."""
        sftp = self._sftp
        with sftp._lock:
            num = int(sftp.request_number)
            sftp._expecting[num] = self
            sftp.request_number += 1
        return num

    def _queue(self, packet: bytes) -> None:
        if len(packet) >= FLUSH_AT:  # a big write goes straight out, not copied again
            self.flush()
            self._sftp._write_all(packet)
            return
        self._out += packet
        if len(self._out) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._out:
            out, self._out = bytes(self._out), bytearray()
            self._sftp._write_all(out)

    def _async_response(self, kind: int, msg: Message, num: int) -> None:
        # paramiko hands over every reply addressed to this object here.
        self._got[num] = (kind, msg)

    def _wait(self, num: int) -> tuple[int, Message]:
        self.flush()
        while num not in self._got:
            self._sftp._read_response()
        return self._got.pop(num)

    def _error(self, msg: Message) -> OSError | None:
        """The error a status reply carries, None for OK."""
        try:
            self._sftp._convert_status(msg)
        except OSError as exc:
            return exc
        except EOFError as exc:
            return OSError(str(exc))
        return None

    def status(self, num: int) -> OSError | None:
        """The error a status reply carries, None for OK."""
        kind, msg = self._wait(num)
        if kind != CMD_STATUS:
            return OSError(f"unexpected SFTP reply {kind}")
        return self._error(msg)

    def attrs(self, num: int) -> SFTPAttributes | OSError | None:
        """An (l)stat's attributes; None when the path does not exist."""
        kind, msg = self._wait(num)
        if kind == CMD_ATTRS:
            return SFTPAttributes._from_msg(msg)
        if kind == CMD_STATUS and (error := self._error(msg)) is not None:
            return None if missing(error) else error
        return OSError(f"unexpected SFTP reply {kind}")

    def handle(self, num: int) -> bytes | OSError:
        kind, msg = self._wait(num)
        if kind == CMD_HANDLE:
            return msg.get_binary()
        if kind == CMD_STATUS and (error := self._error(msg)) is not None:
            return error
        return OSError(f"unexpected SFTP reply {kind}")


def send_folder_opens(replies: Replies, folders: Sequence[bytes | str]) -> list[int]:
    """Open requests for `folders`, to be fsynced by `fsync_opened_folders`.

    OpenSSH's sftp-server opens a folder with open(2), so its handle can be
    fsynced (fsync@openssh.com): what makes a new name in it durable. Sent
    apart from the fsyncs so a caller can put them in a round trip it makes
    anyway (a rename's).
    """
    return [replies.send(CMD_OPEN, folder, SFTP_FLAG_READ, _NO_ATTRS) for folder in folders]


def fsync_opened_folders(replies: Replies, opens: Sequence[int]) -> bool:
    """fsync and close every folder `send_folder_opens` asked for, in one round
    trip; False when one could not be opened or fsynced (a server that refuses)."""
    found = [replies.handle(num) for num in opens]
    handles = [handle for handle in found if isinstance(handle, bytes)]
    fsyncs = [replies.send(CMD_EXTENDED, "fsync@openssh.com", handle) for handle in handles]
    closes = [replies.send(CMD_CLOSE, handle) for handle in handles]
    errors = [replies.status(num) for num in fsyncs]
    for num in closes:
        replies.status(num)
    return len(handles) == len(found) and all(error is None for error in errors)


def fsync_folders(replies: Replies, folders: Sequence[bytes | str]) -> bool:
    """Make the entries of `folders` durable at the site, all in two round trips;
    False when the server refuses (see `fsync_opened_folders`)."""
    return fsync_opened_folders(replies, send_folder_opens(replies, folders))


class RemoteUpload:
    """A new private (0600) file at the site, written in pipelined requests.

    Created exclusively (FXF_EXCL, O_EXCL at the server): an existing file or
    link at the name is never truncated or written through.

    Every write's reply is checked before `finish` returns: a refused write
    (a full disk, a quota) raises instead of leaving a short file behind.
    """

    def __init__(self, sftp: paramiko.SFTPClient, path: bytes | str) -> None:
        self._replies = Replies(sftp)
        private = SFTPAttributes()
        private.st_mode = 0o600  # the server's umask can only narrow it
        flags = NEW_FILE
        found = self._replies.handle(self._replies.send(CMD_OPEN, path, flags, private))
        if isinstance(found, OSError):
            raise found
        self.handle = found
        self._path = path
        self._offset = 0
        self._in_flight: deque[int] = deque()
        self._closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), WRITE_REQUEST_SIZE):
            piece = bytes(view[start : start + WRITE_REQUEST_SIZE])
            self._in_flight.append(self._replies.send_write(self.handle, self._offset, piece))
            self._offset += len(piece)
            while len(self._in_flight) > MAX_WRITES_IN_FLIGHT:
                self._check(self._in_flight.popleft())

    def write_all(self, chunks: Iterable[bytes]) -> int:
        for chunk in chunks:
            self.write(chunk)
        return self._offset

    def set_attrs(self, attrs: SFTPAttributes) -> None:
        self._in_flight.append(self._replies.send(CMD_FSETSTAT, self.handle, attrs))

    def finish(self) -> None:
        """Make the content durable (fsync@openssh.com) and check every reply.

        The fsync goes out right behind the writes: the server answers in order, so
        one round trip covers both, and a refused write still raises here.
        """
        fsync = self._replies.send(CMD_EXTENDED, "fsync@openssh.com", self.handle)
        while self._in_flight:
            self._check(self._in_flight.popleft())
        self._check(fsync)

    def rename_durably(self, target: bytes | str, folder: bytes | str | None) -> bool:
        """After `finish`: close, rename to `target` and open `folder`, in one round
        trip; then fsync `folder` and close it, in another. Returns False when the
        folder could not be fsynced (a server that refuses it); raises when the
        close or the rename failed.
        """
        self._closed = True
        replies = self._replies
        close = replies.send(CMD_CLOSE, self.handle)
        rename = replies.send(CMD_EXTENDED, "posix-rename@openssh.com", self._path, target)
        opened = [] if folder is None else send_folder_opens(replies, [folder])
        self._check(close)
        self._check(rename)
        return fsync_opened_folders(replies, opened)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._check(self._replies.send(CMD_CLOSE, self.handle))

    def _check(self, num: int) -> None:
        error = self._replies.status(num)
        if error is not None:
            raise error

    def __enter__(self) -> RemoteUpload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.close()
            return
        # The error being raised says more than a failed close would.
        with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
            self.close()
