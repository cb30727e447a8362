"""The frames between a restricted primary and `logship site-receive` at the site.

Every frame, both ways (integers big-endian):

    kind:1 header_len:u32 data_len:u32 header data

`header` is a JSON object (at most MAX_HEADER bytes), `data` raw bytes. Requests
(primary -> site), each answered by one reply unless said otherwise:

    M {"path"}                    make the folder and its missing parents (0700)
    P {"path"}                    begin a new file; no reply yet
    D data                        the next bytes of that file (at most MAX_CHUNK); no reply
    E {"size", "sha256"}          end the file: verified, linked to its final name
    A {"path"} data               append to one of the site's append-only logs
    R {"path"}                    read a file (at most MAX_READ bytes)
    S {"path"}                    {"mode": st_mode | null}
    L {"path"}                    the names, a JSON list, as data
    V {"path"}                    {"free": bytes | null}

Replies: K (done; header and data as the request says) or X {"error": "..."}.
The site says K {"ready": true} once, before the first request.

A path is relative to the connector's folder at the site, "/"-separated; ""
names that folder itself. There is no request that removes, renames, truncates,
changes the mode of or links to anything: the protocol cannot express them.
"""

from __future__ import annotations

import json
import struct
from typing import IO, Any

MKDIRS = b"M"
PUT = b"P"
DATA = b"D"
END = b"E"
APPEND = b"A"
READ = b"R"
STAT = b"S"
LISTDIR = b"L"
STATVFS = b"V"
OK = b"K"
ERROR = b"X"
REQUESTS = frozenset({MKDIRS, PUT, DATA, END, APPEND, READ, STAT, LISTDIR, STATVFS})

_HEAD = struct.Struct(">II")
#: the largest JSON header a request may carry
MAX_HEADER = 64 * 1024
#: the largest data of one request frame (a PUT is sent in chunks of at most this)
MAX_CHUNK = 1024 * 1024
#: the largest file READ answers, and the largest reply the primary accepts
MAX_READ = 64 * 1024 * 1024
#: path limits: the whole path, one component, and how deep it may go
PATH_MAX = 1024
NAME_MAX = 255
DEPTH_MAX = 16


class ProtocolError(Exception):
    """The stream is not in the expected format: the peer is not what it should be."""


def frame(kind: bytes, header: dict[str, Any] | None = None, data: bytes = b"") -> bytes:
    head = json.dumps(header or {}, allow_nan=False).encode()
    return kind + _HEAD.pack(len(head), len(data)) + head + data


def _exactly(stream: IO[bytes], size: int) -> bytes:
    if size == 0:
        return b""
    data = stream.read(size)
    if len(data) != size:
        raise ProtocolError(f"stream ended {size - len(data)} byte(s) early")
    return data


def read_frame(
    stream: IO[bytes], max_header: int, max_data: int
) -> tuple[bytes, dict[str, Any], bytes] | None:
    """The next frame (kind, header, data), or None at a clean end of the stream."""
    kind = stream.read(1)
    if not kind:
        return None
    header_len, data_len = _HEAD.unpack(_exactly(stream, _HEAD.size))
    if header_len > max_header or data_len > max_data:
        raise ProtocolError(
            f"frame out of bounds (header {header_len} bytes, data {data_len} bytes)"
        )
    raw = _exactly(stream, header_len)
    try:
        header = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        raise ProtocolError("frame header is not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return kind, header, _exactly(stream, data_len)
