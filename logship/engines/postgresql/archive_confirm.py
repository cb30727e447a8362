"""archive-wal's first step: a segment the read-ahead already shipped is confirmed.

With `[primary] data_dir` set, the daemon ships each segment from pg_wal as soon
as PostgreSQL marks it ready, and leaves the sha256 it shipped in the spool's
tombstone (`.shipped/NAME`) once the segment is durable at the site. The segment
PostgreSQL hands over is then confirmed by its own sha256 matching that one: no
copy, no fsync. While the daemon says it keeps up (logship.read_ahead_beat),
archive-wal waits a bounded time for a segment still on its way; otherwise, or
on any doubt, the caller copies the segment into the spool as before.

PostgreSQL's archiver runs this once per segment and waits for it, so it imports
almost nothing: os, mmap and OpenSSL's sha256 (bench/read_ahead.py times a call).
"""

from __future__ import annotations

import mmap
import os
import time

from logship.read_ahead_beat import read_beat
from logship.tombstones import shipped_sha256

#: how often a waiting archive-wal looks for the tombstone
POLL_S = 0.005
#: and for a change in the daemon's beat
BEAT_POLL_S = 0.25


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, hashed from its pages in place (no copy into this process)."""
    try:
        from _hashlib import openssl_sha256 as sha256  # hashlib's own import costs more
    except ImportError:  # pragma: no cover - an interpreter built without OpenSSL
        from hashlib import sha256
    with open(path, "rb") as source:
        if os.fstat(source.fileno()).st_size == 0:
            return sha256(b"").hexdigest()
        with mmap.mmap(source.fileno(), 0, prot=mmap.PROT_READ) as pages:
            return sha256(pages).hexdigest()


def confirmed(spool_dir: str | os.PathLike[str], source: str | os.PathLike[str]) -> bool:
    """True when `source` is durable at the site with this very content.

    False means "copy it": not shipped yet (and not worth waiting for), or shipped
    with other content, which the copying path then reports as a conflict.
    """
    name = os.path.basename(source)
    recorded = shipped_sha256(spool_dir, name)
    deadline = 0.0
    if recorded is None:
        beat = read_beat(spool_dir)
        if beat is None or not beat.worth_waiting(time.time()):
            return False
        deadline = time.monotonic() + beat.wait_s
    digest = file_sha256(source)
    next_beat = time.monotonic() + BEAT_POLL_S
    while recorded is None:
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= next_beat:
            beat = read_beat(spool_dir)
            if beat is None or not beat.worth_waiting(time.time()):
                return False
            next_beat = now + BEAT_POLL_S
        time.sleep(POLL_S)
        recorded = shipped_sha256(spool_dir, name)
    return recorded == digest
