"""The batch stream between the files connector and `logship tree-receive` at the site.

Small files cost round trips, not bytes: over SFTP each needs its own open,
write, setstat, close and rename. Through this stream a batch is one pass of
frames on the stdin of one long-lived `tree-receive` process at the site, which
writes each file to its temp name, makes all of them durable with one syncfs,
renames them into place, syncs again, and answers one line per file.

Frames (client -> site), all integers big-endian:
    b"F" path_len:u32 mode:u32 mtime_ns:i64 size:u64 path data   a file of the batch
    b"C"                                                         commit the batch
Lines (site -> client), JSON:
    {"ready": true} once at start, or {"error": "..."} and exit
    {"i": N, "error": null | "..."} per file of a committed batch, in order
    {"done": COUNT} after them

Paths are bytes relative to the target folder; they never reach a shell.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import IO, Any

FILE = b"F"
COMMIT = b"C"
_HEADER = struct.Struct(">IIqQ")
#: the longest path a frame may carry (PATH_MAX); a bigger one is a broken stream
PATH_MAX = 4096


class StreamError(Exception):
    """The stream is not in the expected format: the peer is not what it should be."""


@dataclass(frozen=True, slots=True)
class FileFrame:
    path: bytes
    mode: int
    mtime_ns: int
    data: bytes


def file_frame(path: bytes, mode: int, mtime_ns: int, data: bytes) -> bytes:
    return FILE + _HEADER.pack(len(path), mode, mtime_ns, len(data)) + path + data


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise StreamError(f"stream ended {size - len(data)} byte(s) early")
    return data


def read_frame(stream: IO[bytes], max_size: int) -> FileFrame | bytes | None:
    """The next frame: a FileFrame, COMMIT, or None at a clean end of the stream."""
    kind = stream.read(1)
    if not kind:
        return None
    if kind == COMMIT:
        return COMMIT
    if kind != FILE:
        raise StreamError(f"unknown frame {kind!r}")
    path_len, mode, mtime_ns, size = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    if not 0 < path_len <= PATH_MAX or size > max_size:
        raise StreamError(f"frame out of bounds (path {path_len} bytes, data {size} bytes)")
    path = _read_exactly(stream, path_len)
    return FileFrame(path, mode, mtime_ns, _read_exactly(stream, size))


def reply_line(content: dict[str, Any]) -> bytes:
    return json.dumps(content).encode() + b"\n"


def landed_line(index: int) -> bytes:
    """`reply_line({"i": index, "error": None})`, byte for byte, without json: a
    first sync answers thousands of these a second."""
    return b'{"i": %d, "error": null}\n' % index
