"""The first bytes of a connection made at the site's end of the tunnel.

Anyone at the site who can reach 127.0.0.1:site_port gets a connection to the
primary's PostgreSQL, with whatever its pg_hba.conf allows from where the daemon
connects (often `trust` for local connections). So the tunnel carries only what
it is for: a physical replication connection as the configured role. The
PostgreSQL startup message is read and checked here before the primary sees a
byte; anything else is closed.

TLS or GSSAPI encryption is declined (answered "N", as a server without it
would): the bytes already travel inside SSH, and an encrypted startup message
could not be checked.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

PROTOCOL_3 = 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
#: a startup message is a few hundred bytes; beyond this it is not one
STARTUP_LIMIT = 10_000
#: encryption requests to decline before the startup message (libpq sends at most two)
MAX_NEGOTIATIONS = 2
_PHYSICAL = {"true", "on", "yes", "1"}


class StartupRefused(ValueError):
    """Not a physical replication connection as the configured role."""


@dataclass(frozen=True)
class Startup:
    #: the startup message exactly as received, to be sent on to the primary
    raw: bytes


def read_exactly(recv: Callable[[int], bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = recv(size - len(data))
        if not chunk:
            raise StartupRefused("the connection ended before its startup message")
        data += chunk
    return data


def read_startup(
    recv: Callable[[int], bytes], decline: Callable[[bytes], None], role: str
) -> Startup:
    """The checked startup message; StartupRefused when it is not one we carry."""
    for _ in range(MAX_NEGOTIATIONS + 1):
        head = read_exactly(recv, 8)
        (length, code) = struct.unpack("!ii", head)
        if length == 8 and code in (SSL_REQUEST, GSSENC_REQUEST):
            decline(b"N")
            continue
        if not 8 < length <= STARTUP_LIMIT:
            raise StartupRefused(f"a startup message of {length} bytes")
        if code != PROTOCOL_3:
            # A cancel request among others: nothing the standby needs.
            raise StartupRefused(f"protocol code {code}, not a startup message")
        body = read_exactly(recv, length - 8)
        params = parse_parameters(body)
        if params.get("replication", "").lower() not in _PHYSICAL:
            raise StartupRefused("not a physical replication connection")
        if params.get("user") != role:
            raise StartupRefused(f"user {params.get('user')!r}, not the streaming role")
        return Startup(head + body)
    raise StartupRefused("too many encryption requests")


def parse_parameters(body: bytes) -> dict[str, str]:
    """name\\0value\\0 ... \\0: every name once, UTF-8, the list properly ended."""
    if not body.endswith(b"\0\0") and body != b"\0":
        raise StartupRefused("an unterminated parameter list")
    fields = body[:-1].split(b"\0")[:-1]
    if len(fields) % 2:
        raise StartupRefused("a parameter without a value")
    params: dict[str, str] = {}
    for name, value in zip(fields[::2], fields[1::2], strict=True):
        try:
            key, text = name.decode(), value.decode()
        except UnicodeDecodeError:
            raise StartupRefused("a parameter that is not UTF-8") from None
        if not key or key in params:
            raise StartupRefused(f"parameter {key!r} empty or given twice")
        params[key] = text
    return params
