"""`standby stream-check`: can the standby's walreceiver log in through the tunnel?

Run at the site by `logship check`, while a tunnel joins the site's loopback port
to the primary. It connects exactly as the walreceiver would (the standby's
primary_conninfo, passfile included) in replication mode and asks
IDENTIFY_SYSTEM, then once more without any password, and prints one JSON line.
The primary validates that line field by field (`parse_answer`): it crosses the
site boundary, and the systemid in it says where the tunnel really leads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logship.errors import printable

if TYPE_CHECKING:
    from logship.engines.postgresql.engine import PostgresConnector

#: the application_name of stream-check's logins, as pg_stat_replication shows them
PROBE_NAME = "logship_stream_check"
#: the most the site's answer may hold: one short JSON line
ANSWER_LIMIT = 4096
#: the longest error text kept from the site's answer
ERROR_LIMIT = 1000
_SYSTEMID = re.compile(r"[0-9]{1,20}")
_LSN = re.compile(r"[0-9A-F]{1,8}/[0-9A-F]{1,8}")
_OK_KEYS = frozenset({"systemid", "timeline", "xlogpos", "needs_password"})
_U64 = 1 << 64
_U32 = 1 << 32


# -- at the site ---------------------------------------------------------------------


def _identify(conninfo: str) -> tuple[list[str] | None, str | None]:
    """IDENTIFY_SYSTEM's first three columns, or None and libpq's one-line error.

    psycopg's execute speaks the extended query protocol, which a physical
    replication connection refuses: the low-level connection's simple query it is.
    """
    from psycopg import pq

    conn = pq.PGconn.connect(conninfo.encode())
    try:
        if conn.status != pq.ConnStatus.OK:
            return None, " ".join(conn.error_message.decode(errors="replace").split())
        result = conn.exec_(b"IDENTIFY_SYSTEM")
        if result.status != pq.ExecStatus.TUPLES_OK or result.ntuples != 1:
            message = (result.error_message or conn.error_message).decode(errors="replace")
            return None, " ".join(message.split()) or "IDENTIFY_SYSTEM gave no row"
        values = [result.get_value(0, column) for column in range(3)]
        return [(v or b"").decode(errors="replace") for v in values], None
    finally:
        conn.finish()


def passfile_problem(passfile: Path, data_dir: Path) -> str | None:
    """Why the standby's walreceiver could not use `passfile`: libpq ignores one
    that others may read, and the standby runs as its data directory's owner."""
    try:
        st = passfile.stat()
    except OSError as exc:
        return f"[streaming].passfile {passfile}: {exc.strerror or exc}"
    if st.st_mode & 0o077:
        return (
            f"[streaming].passfile {passfile} has mode {st.st_mode & 0o777:04o}: libpq ignores "
            "a password file others may read; chmod 600 it"
        )
    with contextlib.suppress(OSError):
        owner = data_dir.stat().st_uid
        if st.st_uid != owner:
            return (
                f"[streaming].passfile {passfile} is owned by uid {st.st_uid}, the standby "
                f"(data_dir {data_dir}) runs as uid {owner} and could not read it; chown it"
            )
    if not os.access(passfile, os.R_OK):
        return f"[streaming].passfile {passfile} cannot be read here (uid {os.geteuid()})"
    return None


def probe_through_tunnel(connector: PostgresConnector) -> dict[str, Any]:
    """The answer `standby stream-check` prints: IDENTIFY_SYSTEM's facts and whether
    a login without any password is refused, or {"error": ...}."""
    from psycopg.conninfo import make_conninfo

    from logship.engines.postgresql.streaming.settings import standby_conninfo

    # The standby's own connection string, but under a name of its own: this login
    # must never pass for the standby in pg_stat_replication (synchronous mode).
    conninfo = make_conninfo(standby_conninfo(connector), application_name=PROBE_NAME)
    passfile = connector.streaming.passfile
    if passfile is not None:
        problem = passfile_problem(passfile, connector.standby.data_dir)
        if problem is not None:
            return {"error": problem}
    row, error = _identify(make_conninfo(conninfo, replication="true"))
    if row is None:
        return {"error": error or "no answer"}
    systemid, timeline, xlogpos = row
    # Once more as anybody at the site who reaches the port: an empty passfile, and
    # an empty password so that PGPASSWORD is not read either.
    with tempfile.TemporaryDirectory(prefix="logship-stream-check-") as private:
        empty = os.path.join(private, "empty.pgpass")
        with open(os.open(empty, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w"):
            pass
        anybody = make_conninfo(conninfo, replication="true", passfile=empty, password="")
        without, refusal = _identify(anybody)
    refused = refusal is not None and ("password" in refusal or "authentication" in refusal)
    if without is None and not refused:
        # Failed for another reason (no free sender...): that says nothing either way.
        return {"error": f"could not tell whether a login without the password works: {refusal}"}
    return {
        "systemid": systemid,
        "timeline": int(timeline) if timeline.isdigit() else timeline,
        "xlogpos": xlogpos,
        "needs_password": refused,
    }


# -- at the primary: the answer as it arrives --------------------------------------


class BadAnswer(ValueError):
    """The site's answer is not what stream-check prints."""


@dataclass(frozen=True)
class StreamAnswer:
    """What the site said: the facts on success, else the login's error (escaped)."""

    systemid: int | None = None
    timeline: int | None = None
    xlogpos: str | None = None
    needs_password: bool | None = None
    error: str | None = None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise BadAnswer("a key appears twice")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise BadAnswer(f"{name} is not JSON")


def parse_answer(out: bytes) -> StreamAnswer:
    """The site's stdout as a StreamAnswer; BadAnswer for anything else."""
    if len(out) > ANSWER_LIMIT:
        raise BadAnswer(f"more than {ANSWER_LIMIT} bytes")
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        raise BadAnswer("not UTF-8") from None
    lines = text.splitlines()
    if len(lines) != 1:
        raise BadAnswer(f"{len(lines)} lines, not one")
    try:
        data = json.loads(lines[0], object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadAnswer(f"not JSON ({exc.msg})") from None
    except RecursionError:
        raise BadAnswer("nested too deep") from None
    if not isinstance(data, dict):
        raise BadAnswer("not a JSON object")
    if set(data) == {"error"}:
        error = data["error"]
        if not isinstance(error, str) or not error or len(error) > ERROR_LIMIT:
            raise BadAnswer("error is not a short text")
        return StreamAnswer(error=printable(error))
    if set(data) != _OK_KEYS:
        raise BadAnswer(f"keys {sorted(map(printable, data))[:8]}")
    systemid, timeline = data["systemid"], data["timeline"]
    xlogpos, needs_password = data["xlogpos"], data["needs_password"]
    if not isinstance(systemid, str) or not _SYSTEMID.fullmatch(systemid):
        raise BadAnswer("systemid is not a string of up to 20 digits")
    if int(systemid) >= _U64:
        raise BadAnswer("systemid is larger than 64 bits")
    if type(timeline) is not int or not 1 <= timeline < _U32:
        raise BadAnswer("timeline is not a timeline number")
    if not isinstance(xlogpos, str) or not _LSN.fullmatch(xlogpos):
        raise BadAnswer("xlogpos is not a WAL position")
    if type(needs_password) is not bool:
        raise BadAnswer("needs_password is not true or false")
    return StreamAnswer(int(systemid), timeline, xlogpos, needs_password)
