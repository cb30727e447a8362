"""What the tunnel lets through to the primary: checked startup messages only."""

from __future__ import annotations

import struct

import pytest

from logship.engines.postgresql.streaming.startup import (
    GSSENC_REQUEST,
    PROTOCOL_3,
    SSL_REQUEST,
    StartupRefused,
    read_startup,
)

ROLE = "logship_replication"


def startup(**params: str) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!ii", 8 + len(body), PROTOCOL_3) + body


def feed(data: bytes) -> tuple[object, list[bytes]]:
    stream = bytearray(data)
    answers: list[bytes] = []

    def recv(size: int) -> bytes:
        chunk = bytes(stream[: min(size, 3)])  # short reads, as a socket may give
        del stream[: len(chunk)]
        return chunk

    return read_startup(recv, answers.append, ROLE), answers


def test_a_physical_replication_startup_passes_unchanged_after_declined_encryption() -> None:
    message = startup(user=ROLE, replication="true", application_name="logship_main")
    requests = struct.pack("!ii", 8, GSSENC_REQUEST) + struct.pack("!ii", 8, SSL_REQUEST)
    result, answers = feed(requests + message)
    assert result.raw == message
    assert answers == [b"N", b"N"]


@pytest.mark.parametrize(
    "data",
    [
        startup(user="postgres", dbname="postgres"),
        startup(user="postgres", replication="true"),
        startup(user=ROLE, dbname="postgres"),
        startup(user=ROLE, replication="database"),
        startup(user=ROLE, replication="true", user_=ROLE).replace(b"user_", b"user"),
        struct.pack("!iii", 16, 80877102, 1),  # a cancel request
        struct.pack("!ii", 100_000, PROTOCOL_3),
        struct.pack("!ii", 4, PROTOCOL_3),
        startup(user=ROLE, replication="true")[:-1] + b"x",
        startup(user=ROLE, replication="true")[:-2] + b"\xff\0",
        struct.pack("!ii", 8, SSL_REQUEST) * 3 + startup(user=ROLE, replication="true"),
        startup(user=ROLE, replication="true")[:12],
        b"",
    ],
    ids=[
        "ordinary",
        "superuser-replication",
        "role-ordinary",
        "logical",
        "user-twice",
        "cancel",
        "huge",
        "tiny",
        "unterminated",
        "not-utf8",
        "too-many-requests",
        "cut-short",
        "nothing",
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(StartupRefused):
        feed(data)
