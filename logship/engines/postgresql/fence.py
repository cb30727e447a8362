"""Fencing a stopped old primary: after a failover it must never start as a primary
until `logship reinstate` has made it a standby of the new one.

A fence is three things in the data directory, all removed again by `unfence`:

- `standby.signal`: started by anyone, by any means (pg_ctl, systemd), PostgreSQL
  comes up in recovery, where every write fails with "cannot execute ... in a
  read-only transaction" while the old data stays readable (for lost commits);
- a marked block at the end of `postgresql.auto.conf`: a restore_command that only
  prints why the server is fenced and what to do, to the server log, and fails
  (so recovery waits for WAL that never comes, forever, and says so each time it
  asks), no primary to stream from, no recovery target that could end recovery,
  no promote trigger file, hot_standby on so the refusal is one a client can
  read, and the wait between asks at a minute (the message repeats that often);
- `logship.fence.json`: who fenced it, when and for which new primary, written
  durably (the marker is written last, so it means the fence is complete).

postgresql.auto.conf, not an include line in postgresql.conf: it is always in the
data directory (Debian keeps postgresql.conf in /etc), PostgreSQL reads it last so
its lines win over postgresql.conf, and a standby logship restored keeps its own
restore_command there, which an include from postgresql.conf could not override.
ALTER SYSTEM rewrites the file without comments but keeps every other setting
line as it is: the block's lines are written the way ALTER SYSTEM writes them, so
`unfence` still finds them (their last occurrences) when the markers are gone.

pg_rewind and a new base backup replace all of this with the source's files: the
caller that runs them fences again (or writes standby config) before anything can
start the server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from logship import jsonin, jsonout
from logship.config.model import CONNECTOR_NAME_MAX, CONNECTOR_NAME_PATTERN
from logship.durable import fsync_dir, write_bytes_atomically
from logship.engines.postgresql.postmaster import running_server
from logship.engines.postgresql.tools import quote_conf_string
from logship.errors import OperationFailed, SafetyRefusal, shown_text

MARKER_NAME = "logship.fence.json"
SIGNAL_NAME = "standby.signal"
AUTO_CONF_NAME = "postgresql.auto.conf"
WRITER = "logship fence"
MARKER_FORMAT = 1
#: the marker is about 300 bytes; a bigger file is not one logship wrote
MARKER_LIMIT = 4096
#: postgresql.auto.conf holds settings; a file this big is not one to rewrite
AUTO_CONF_LIMIT = 1024 * 1024

#: what made the new primary: the only reasons a fence states
KINDS = ("failover", "switchover")
#: PostgreSQL's TimeLineID is an unsigned 32-bit number; 0 is not a timeline
MAX_TIMELINE = 0xFFFFFFFF

BEGIN_LINE = f"# {WRITER}: begin (`logship reinstate` removes this block; do not edit it)"
END_LINE = f"# {WRITER}: end"

_NAME = re.compile(CONNECTOR_NAME_PATTERN)
_WHEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_WHEN_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: a setting line in a postgresql.conf file: "name = value" or "name value"
_SETTING = re.compile(r"^([A-Za-z_][A-Za-z0-9_$.]*)\s*(=|\s)")
_MARKER_KEYS = frozenset(
    {
        "format",
        "writer",
        "connector",
        "kind",
        "new_primary_site",
        "new_timeline",
        "fenced_at",
        "created_signal",
    }
)


class FenceMarkerInvalid(SafetyRefusal):
    """The data directory's fence marker is not one logship wrote: whether the
    server is fenced, and for what, cannot be known from it."""


@dataclass(frozen=True)
class FenceReason:
    """Why a server is fenced: its connector had a `kind` (failover, switchover),
    and `new_primary_site` is the primary now, on `new_timeline`."""

    connector: str
    kind: str
    new_primary_site: str
    new_timeline: int


@dataclass(frozen=True)
class FenceState:
    """A fence as the marker tells it, and whether its parts are still in place."""

    reason: FenceReason
    #: UTC, whole seconds, as "YYYY-MM-DDTHH:MM:SSZ"
    fenced_at: str
    #: the fence created standby.signal (one there before is left by unfence)
    created_signal: bool
    #: standby.signal is there and the fence's restore_command is in
    #: postgresql.auto.conf: started by hand, the server stays read-only and says why
    intact: bool


def reason_problem(reason: FenceReason) -> str | None:
    """What makes `reason` unfit to be written into a data directory (None: fit)."""
    for what, name in (("connector", reason.connector), ("site", reason.new_primary_site)):
        if not isinstance(name, str) or len(name) > CONNECTOR_NAME_MAX or not _NAME.fullmatch(name):
            return (
                f"{what} name {name!r} is not 1 to {CONNECTOR_NAME_MAX} letters, digits, "
                "'_', '.' or '-' starting with a letter or digit"
            )
    if reason.kind not in KINDS:
        return f"kind {reason.kind!r} is not one of {', '.join(KINDS)}"
    timeline = reason.new_timeline
    if type(timeline) is not int or not 1 <= timeline <= MAX_TIMELINE:
        return f"timeline {timeline!r} is not a number from 1 to {MAX_TIMELINE}"
    return None


def fence_message(reason: FenceReason, fenced_at: str) -> str:
    """The line the fenced server's log repeats: what happened, what to do.

    Only validated names and numbers go into it (see reason_problem)."""
    return (
        f"logship fence: this server was the primary of connector {reason.connector} "
        f"until a {reason.kind}; site {reason.new_primary_site} is the primary now "
        f"(timeline {reason.new_timeline}), fenced {fenced_at}. It stays in recovery and "
        f"refuses writes until `logship reinstate {reason.connector}` makes it a standby "
        "of the new primary. Do not promote it or remove standby.signal: that makes two "
        "primaries."
    )


def fence_restore_command(message: str) -> str:
    """A restore_command that prints `message` on stderr (the server log) and fails.

    Exit status 1 is PostgreSQL's "not in the archive": recovery keeps waiting, and
    asks again. PostgreSQL runs the command with /bin/sh and expands %f, %p, %r and
    %% in it first, so the message is shell-quoted and any % doubled.
    """
    return (shlex.join(["echo", message]) + " >&2; exit 1").replace("%", "%%")


def fence_settings(message: str) -> list[tuple[str, str]]:
    """(name, value) of the block; each line is written as ALTER SYSTEM writes it."""
    return [
        ("restore_command", fence_restore_command(message)),
        # Nothing to stream from: the old primary's history has forked from the
        # new one's, and a fence follows no one.
        ("primary_conninfo", ""),
        ("primary_slot_name", ""),
        # A recovery target left from an old recovery could end recovery, and with
        # recovery_target_action = promote, make it a primary.
        ("recovery_target", ""),
        ("recovery_target_lsn", ""),
        ("recovery_target_name", ""),
        ("recovery_target_time", ""),
        ("recovery_target_xid", ""),
        ("promote_trigger_file", ""),
        # Nothing ever comes: the fence's message once a minute is enough, not the
        # default's every 5 seconds, which grows the log by megabytes a day.
        ("wal_retrieve_retry_interval", "1min"),
        # Read-only connections, so a client's write gets PostgreSQL's own refusal
        # instead of "the database system is starting up" forever.
        ("hot_standby", "on"),
    ]


def fence_lines(message: str) -> list[str]:
    return [f"{name} = {quote_conf_string(value)}" for name, value in fence_settings(message)]


def fence(data_dir: Path, reason: FenceReason, *, now: float | None = None) -> FenceState:
    """Fence the stopped server in `data_dir` for `reason`; again on a fenced one
    replaces its fence (the newest reason shows).

    Refuses (SafetyRefusal) while a server runs there; OperationFailed when the data
    directory or `reason` cannot take a fence.
    """
    problem = reason_problem(reason)
    if problem is not None:
        raise OperationFailed(f"fence of {data_dir}: the reason cannot be written: {problem}")
    _check_data_dir(data_dir)
    _refuse_running(data_dir, "fence")
    try:
        previous = fence_state(data_dir)
    except FenceMarkerInvalid:
        previous = None  # replaced below: a fence must not be held up by garbage
    signal_there = _is_file(data_dir / SIGNAL_NAME)
    created_signal = previous.created_signal if previous is not None else not signal_there
    fenced_at = datetime.fromtimestamp(now if now is not None else _now(), UTC).strftime(
        _WHEN_FORMAT
    )
    message = fence_message(reason, fenced_at)
    owner = _owner(data_dir)

    auto = data_dir / AUTO_CONF_NAME
    text = _read_auto_conf(auto)  # one that cannot be rewritten refuses the fence whole
    # The signal first: from then on nothing can start the server as a primary.
    if not signal_there:
        _write_new(data_dir / SIGNAL_NAME, b"", owner)
    old_lines = [] if previous is None else _lines_of(previous)
    text = _without_block(text, old_lines)
    if text and not text.endswith("\n"):
        text += "\n"
    text += "\n".join([BEGIN_LINE, *fence_lines(message), END_LINE]) + "\n"
    _replace(auto, text.encode(), _owner_of(auto, owner))

    marker = {
        "format": MARKER_FORMAT,
        "writer": WRITER,
        "connector": reason.connector,
        "kind": reason.kind,
        "new_primary_site": reason.new_primary_site,
        "new_timeline": reason.new_timeline,
        "fenced_at": fenced_at,
        "created_signal": created_signal,
    }
    _replace(data_dir / MARKER_NAME, jsonout.dumps(marker).encode() + b"\n", owner)
    # A server started between the check and now read a data directory without
    # the fence: it may be a primary.
    _refuse_running(data_dir, "fence (the server started while the fence was written)")
    return FenceState(reason, fenced_at, created_signal, intact=True)


def fence_state(data_dir: Path) -> FenceState | None:
    """The fence on `data_dir` (None: there is no marker); FenceMarkerInvalid when
    the marker is not one logship wrote (a link, too big, not its JSON)."""
    path = data_dir / MARKER_NAME
    try:
        raw = _read_regular(path, MARKER_LIMIT)
    except FileNotFoundError:
        return None
    except _NotRegular as exc:
        raise _invalid(path, str(exc)) from None
    except OSError as exc:
        raise OperationFailed(f"{path}: cannot read the fence marker: {exc}") from None
    try:
        fields = jsonin.load_object(raw, "fence marker", MARKER_LIMIT)
        reason, fenced_at, created_signal = _parse_marker(fields)
    except ValueError as exc:
        raise _invalid(path, str(exc)) from None
    restore_line = fence_lines(fence_message(reason, fenced_at))[0]
    intact = (
        _is_file(data_dir / SIGNAL_NAME)
        and _last_setting(_read_auto_conf(data_dir / AUTO_CONF_NAME), "restore_command")
        == restore_line
    )
    return FenceState(reason, fenced_at, created_signal, intact)


def _lines_of(state: FenceState) -> list[str]:
    return fence_lines(fence_message(state.reason, state.fenced_at))


def unfence(data_dir: Path, *, keep_signal: bool = False) -> bool:
    """Remove exactly what `fence` added to the stopped server's data directory:
    the block (or, when ALTER SYSTEM dropped its markers, the last occurrence of
    each of its lines), standby.signal if the fence created it, the marker last.

    `keep_signal`: leave standby.signal whoever wrote it, for a caller that makes
    the server a standby (standby config written before unfence rewrites the
    signal file, which would otherwise go with the fence, and the server start as
    a primary). False when there was no fence. Refuses while a server runs there,
    and when the marker is not logship's (FenceMarkerInvalid: what to remove is
    unknown).
    """
    _check_data_dir(data_dir)
    _refuse_running(data_dir, "unfence")
    state = fence_state(data_dir)
    if state is None:
        return False
    owner = _owner(data_dir)
    auto = data_dir / AUTO_CONF_NAME
    text = _read_auto_conf(auto)
    stripped = _without_block(text, _lines_of(state))
    if stripped != text:
        _replace(auto, stripped.encode(), _owner_of(auto, owner))
    if state.created_signal and not keep_signal:
        _remove(data_dir / SIGNAL_NAME)
    _remove(data_dir / MARKER_NAME)
    return True


# -- the marker --------------------------------------------------------------------------


def _parse_marker(fields: dict[str, Any]) -> tuple[FenceReason, str, bool]:
    keys = set(fields)
    if keys != _MARKER_KEYS:
        odd = sorted(keys ^ _MARKER_KEYS)[:5]
        raise ValueError(f"fence marker: unexpected or missing keys {odd}")
    if fields["format"] != MARKER_FORMAT or type(fields["format"]) is not int:
        raise ValueError(f"fence marker: format is not {MARKER_FORMAT}")
    if fields["writer"] != WRITER:
        raise ValueError(f"fence marker: writer is not {WRITER!r}")
    for key in ("connector", "kind", "new_primary_site", "fenced_at"):
        if not isinstance(fields[key], str):
            raise ValueError(f"fence marker: {key} is not a string")
    reason = FenceReason(
        connector=fields["connector"],
        kind=fields["kind"],
        new_primary_site=fields["new_primary_site"],
        new_timeline=fields["new_timeline"],
    )
    problem = reason_problem(reason)
    if problem is not None:
        raise ValueError(f"fence marker: {problem}")
    fenced_at = fields["fenced_at"]
    if not _WHEN.fullmatch(fenced_at):
        raise ValueError("fence marker: fenced_at is not YYYY-MM-DDTHH:MM:SSZ")
    try:
        datetime.strptime(fenced_at, _WHEN_FORMAT)
    except ValueError:
        raise ValueError("fence marker: fenced_at is not a real time") from None
    if type(fields["created_signal"]) is not bool:
        raise ValueError("fence marker: created_signal is not true or false")
    return reason, fenced_at, fields["created_signal"]


def _invalid(path: Path, why: str) -> FenceMarkerInvalid:
    return FenceMarkerInvalid(
        f"{path}: not a fence marker logship wrote ({shown_text(why, 200)}); whether this "
        "server may start as a primary is unknown: check it by hand, then remove the "
        "file or run `logship reinstate`"
    )


# -- postgresql.auto.conf ----------------------------------------------------------------


def _without_block(text: str, lines: list[str]) -> str:
    """`text` without the fence's marked block(s), BEGIN_LINE .. END_LINE; where a
    marker is gone (ALTER SYSTEM drops comments), without the last occurrence of
    each of `lines` instead, and nothing the user wrote."""
    kept: list[str] = []
    block: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\r\n")
        if bare == BEGIN_LINE:
            kept.extend(block)  # a begin without its end: what followed it is kept
            block, inside = [], True
        elif inside and bare == END_LINE:
            block, inside = [], False
        elif inside:
            block.append(line)
        else:
            kept.append(line)
    kept.extend(block)
    for wanted in lines:
        for index in range(len(kept) - 1, -1, -1):
            if kept[index].rstrip("\r\n") == wanted:
                del kept[index]
                break
    return "".join(kept)


def _last_setting(text: str, name: str) -> str | None:
    """The last line of `text` that sets `name` (PostgreSQL reads the file in
    order, and the last one wins), stripped; None when none does."""
    found = None
    for line in text.splitlines():
        bare = line.strip()
        match = _SETTING.match(bare)
        if match is not None and match.group(1).lower() == name:
            found = bare
    return found


def _read_auto_conf(path: Path) -> str:
    try:
        raw = _read_regular(path, AUTO_CONF_LIMIT)
    except FileNotFoundError:
        return ""
    except (_NotRegular, OSError) as exc:
        raise OperationFailed(f"{path}: cannot read it: {exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OperationFailed(f"{path}: not UTF-8 text; fix it by hand") from None


# -- files in the data directory ---------------------------------------------------------


class _NotRegular(OSError):
    pass


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of `path`, a regular file (not a link, FIFO, folder) of at most
    `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _NotRegular("a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _NotRegular("not a regular file")
        chunks = []
        size = 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _NotRegular(f"larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _is_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _check_data_dir(data_dir: Path) -> None:
    try:
        st = os.lstat(data_dir)
    except OSError as exc:
        raise OperationFailed(f"{data_dir}: not a data directory: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or not (data_dir / "PG_VERSION").is_file():
        raise OperationFailed(f"{data_dir}: not a PostgreSQL data directory (no PG_VERSION)")


def _refuse_running(data_dir: Path, what: str) -> None:
    why = running_server(data_dir)
    if why is not None:
        raise SafetyRefusal(
            f"{what} of {data_dir}: a PostgreSQL server runs there ({why}); stop it "
            "first (pg_ctl stop -m fast), then run this again"
        )


def _owner(data_dir: Path) -> tuple[int, int, int]:
    """(uid, gid, file mode) for files in the data directory: its owner's (the
    server must read them as that user; logship may run as root), group-readable
    when the data directory is (initdb --allow-group-access)."""
    st = os.stat(data_dir)
    mode = 0o640 if st.st_mode & stat.S_IRGRP else 0o600
    return st.st_uid, st.st_gid, mode


def _owner_of(path: Path, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """(uid, gid, mode) of `path` as it is, to keep them when it is replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return default
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _write_new(path: Path, data: bytes, owner: tuple[int, int, int]) -> None:
    uid, gid, mode = owner
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        _give(fd, uid, gid, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _replace(path: Path, data: bytes, owner: tuple[int, int, int]) -> None:
    """`path` replaced by `data` atomically and durably, owned as the data
    directory's files are (a link there is replaced, never followed)."""
    uid, gid, mode = owner
    write_bytes_atomically(path, data)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        _give(fd, uid, gid, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _give(fd: int, uid: int, gid: int, mode: int) -> None:
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def _now() -> float:
    import time

    return time.time()
