"""What a switchover does at one site, each step one call with a JSON answer.

`logship switchover` runs at either site; the steps at the other site run there
through `logship switchover-step` over SSH (the same code, the same answers), so
every action on a database happens at that database's own site.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from logship.config.load import Role, load_config
from logship.config.model import Config
from logship.engines.postgresql import walnames
from logship.engines.postgresql.engine import PostgresConnector, SideSection
from logship.engines.postgresql.postmaster import running_server
from logship.engines.postgresql.promote import JOURNAL_NAME, append_journal, write_marker
from logship.engines.postgresql.rewind_parse import ControlData
from logship.engines.postgresql.rewind_target import read_controldata
from logship.engines.postgresql.standby_restore import (
    LOG_NAME,
    local_peer_hba,
    run_tool,
    standby_settings,
    start_server,
    write_recovery_config,
)
from logship.engines.postgresql.tools import find_program, parse_dsn, quote_conf_string
from logship.errors import OperationFailed, SafetyRefusal, UsageError, first_line
from logship.manifest import SiteLayout
from logship.recorded_roles import record_primary

STOP_TIMEOUT_S = 120
ASK_TIMEOUT_S = 10
FOLLOW_WRITER = "logship switchover"


def config_for(config: Config, role: Role) -> Config:
    """The same files oriented with this site in `role`."""
    return load_config(config.path, this_site=config.this_site, role=role)


def two_sided(config: Config, name: str) -> tuple[PostgresConnector, str, SideSection]:
    """(connector, this site, this site's side); UsageError when it has no sides here."""
    connector = config.connector_of_kind(name, PostgresConnector, "switchover is for postgresql")
    here = config.this_site
    if connector.sides is None:
        raise UsageError(
            f"connector {name!r} is one-way (site + [primary] + [standby]); a switchover "
            "needs both databases described: write it with [sides.SITE] (see docs)"
        )
    if here is None or here not in connector.sides:
        raise UsageError(
            f"connector {name!r}: which site is this? pass --this-site NAME or set LOGSHIP_SITE"
        )
    return connector, here, connector.sides[here]


def _connect(dsn: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(dsn, connect_timeout=ASK_TIMEOUT_S, autocommit=True)
    except psycopg.Error as exc:
        raise OperationFailed(f"cannot connect: {first_line(exc)}") from None


FACTS = """
select pg_is_in_recovery(),
       case when pg_is_in_recovery() then pg_last_wal_replay_lsn()
            else pg_current_wal_lsn() end::text,
       (select system_identifier::text from pg_control_system())
"""


def facts(config: Config, name: str) -> dict[str, Any]:
    """This site's database: up or not, in recovery or not, where it is (a standby:
    what it replayed), and which cluster it is a copy of."""
    _, here, side = two_sided(config, name)
    import psycopg

    try:
        with psycopg.connect(side.dsn, connect_timeout=ASK_TIMEOUT_S, autocommit=True) as conn:
            row = conn.execute(FACTS).fetchone()
    except psycopg.Error as exc:
        return {"site": here, "up": False, "error": first_line(exc)}
    assert row is not None
    in_recovery, lsn, system_id = row
    return {
        "site": here,
        "up": True,
        "in_recovery": bool(in_recovery),
        "lsn": lsn,
        "system_identifier": system_id,
    }


def reach(config: Config, name: str, target: str) -> dict[str, Any]:
    """This site reaches `target` over SSH (host key checked) and runs logship there."""
    from logship.ship.sftp import SftpTransport

    two_sided(config, name)
    if target not in config.sites:
        raise UsageError(f"no site {target!r}")
    site = config.sites[target]
    transport = SftpTransport(site)
    try:
        status, out, err = transport.run_command([*site.command, "--version"], timeout=30)
    finally:
        transport.close()
    if status != 0:
        raise OperationFailed(
            f"site {target}: `logship --version` exited {status}: {first_line(err.decode())}"
        )
    return {"site": config.this_site, "reached": target, "version": out.decode().strip()[:100]}


def checkpoint_segment(control: ControlData) -> str:
    """The WAL segment holding the latest checkpoint record."""
    return walnames.segment_of_lsn(control.timeline, control.checkpoint_lsn, control.segment_size)


def pg_ctl(side: SideSection) -> Path:
    return find_program("pg_ctl", bin_dir=side.bin_dir, data_dir=side.data_dir, setting="bin_dir")


def stop_server(side: SideSection, here: str) -> None:
    """pg_ctl stop -m fast: a clean stop, with a shutdown checkpoint."""
    argv = [str(pg_ctl(side)), "-D", str(side.data_dir), "-m", "fast", "-w"]
    done = run_tool(
        [*argv, "-t", str(STOP_TIMEOUT_S), "stop"], side.data_dir, timeout=STOP_TIMEOUT_S + 30
    )
    if done.returncode != 0:
        raise OperationFailed(
            f"pg_ctl stop at {here}: {first_line(done.stderr or done.stdout) or 'failed'}"
        )


def stop(config: Config, name: str) -> dict[str, Any]:
    """Stop the primary here cleanly (a shutdown checkpoint); its final position."""
    _, here, side = two_sided(config, name)
    started = time.time()
    stop_server(side, here)
    control = read_controldata(side.data_dir, side.bin_dir)
    if control.state != "shut down":
        raise OperationFailed(
            f"the database at {here} is {control.state!r} after pg_ctl stop, not cleanly shut down"
        )
    return {
        "site": here,
        "stopped_at": started,
        "checkpoint_lsn": walnames.int_to_lsn(control.checkpoint_lsn),
        "timeline": control.timeline,
        "segment": checkpoint_segment(control),
        "segment_size": control.segment_size,
        "system_identifier": str(control.system_identifier),
    }


def restart(config: Config, name: str) -> dict[str, Any]:
    """Start the database here again as it was (undoing `stop` before a promote)."""
    _, here, side = two_sided(config, name)
    start_server(pg_ctl(side), side.data_dir, side.data_dir / LOG_NAME, what="the primary")
    return {"site": here, "started": True}


def _segments(first: str, last: str, segment_size: int) -> list[str]:
    a, b = walnames.parse(first), walnames.parse(last)
    assert a is not None and b is not None
    start, end = a.segment_number(segment_size), b.segment_number(segment_size)
    return [walnames.segment_name(b.timeline, n, segment_size) for n in range(start, end + 1)]


def ship_final(config: Config, name: str, since_lsn: str, *, dry_run: bool) -> dict[str, Any]:
    """Make every segment from the standby's replay position up to the stopped
    primary's shutdown checkpoint durable at the standby's site, straight from
    pg_wal (what is there already is left as it is). With `dry_run`: only which
    are at the site, which would ship, and which are nowhere (a gap)."""
    from logship.ship.sftp import SftpTransport
    from logship.ship.shipper import ship_file
    from logship.spool import entry_for

    oriented = config_for(config, "primary")
    connector, here, side = two_sided(oriented, name)
    site = oriented.site_of(connector)
    layout = SiteLayout.for_connector(site.root, connector.name)
    wal_dir = side.data_dir / "pg_wal"
    if dry_run:
        segment_size, timeline, last = _current_position(side)
    else:
        control = read_controldata(side.data_dir, side.bin_dir)
        if control.state != "shut down":
            raise SafetyRefusal(f"the database at {here} is {control.state!r}, not shut down")
        segment_size, timeline, last = (
            control.segment_size,
            control.timeline,
            checkpoint_segment(control),
        )
    first = walnames.segment_of_lsn(timeline, walnames.lsn_to_int(since_lsn), segment_size)
    shipped: list[str] = []
    present: list[str] = []
    missing: list[str] = []
    transport = SftpTransport(site)
    try:
        for segment in _segments(first, last, segment_size):
            at_site = transport.read_bytes(layout.record_path(segment)) is not None
            entry = entry_for(connector.name, wal_dir / segment)
            if at_site and (dry_run or entry is None):
                present.append(segment)
            elif entry is None:
                missing.append(segment)
            elif dry_run:
                shipped.append(segment)
            else:
                ship_file(transport, layout, entry, connector.compression, time.time)
                shipped.append(segment)
    finally:
        transport.close()
    if missing and not dry_run:
        raise OperationFailed(
            f"segments {missing[0]}..{missing[-1]} are neither in pg_wal at {here} nor at "
            f"site {site.name}: the standby cannot reach the final checkpoint"
        )
    return {"site": here, "shipped": shipped, "present": present, "missing": missing, "last": last}


def _current_position(side: SideSection) -> tuple[int, int, str]:
    with _connect(side.dsn) as conn:
        row = conn.execute(
            "select (select setting::bigint from pg_settings where name = 'wal_segment_size'), "
            "pg_walfile_name(pg_current_wal_lsn())"
        ).fetchone()
    assert row is not None
    segment_size, walfile = int(row[0]), str(row[1])
    return segment_size, int(walfile[:8], 16), walfile


def unship_final(config: Config, name: str, segment: str) -> dict[str, Any]:
    """Take the stopped primary's last, partly written segment back from the
    standby's site: the primary runs on, and would write the rest of it."""
    from logship.ship.sftp import SftpTransport

    if walnames.parse(segment) is None:
        raise UsageError(f"{segment!r} is not a WAL segment name")
    oriented = config_for(config, "primary")
    connector, here, _ = two_sided(oriented, name)
    site = oriented.site_of(connector)
    layout = SiteLayout.for_connector(site.root, connector.name)
    transport = SftpTransport(site)
    try:
        transport.remove(layout.record_path(segment))
        transport.remove(layout.stored_wal(segment, connector.compression))
    finally:
        transport.close()
    return {"site": here, "removed": segment}


def replayed(config: Config, name: str, lsn: str, timeout: float) -> dict[str, Any]:
    """Wait until the standby here has replayed past `lsn` (the old primary's
    final checkpoint record starts there)."""
    _, here, side = two_sided(config, name)
    target = walnames.lsn_to_int(lsn)
    deadline = time.monotonic() + timeout
    with _connect(side.dsn) as conn:
        while True:
            row = conn.execute(
                "select pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"
            ).fetchone()
            assert row is not None
            in_recovery, replay = bool(row[0]), row[1]
            if not in_recovery:
                raise SafetyRefusal(f"the database at {here} is not in recovery: not a standby")
            if replay is not None and walnames.lsn_to_int(replay) > target:
                return {"site": here, "replay_lsn": replay}
            if time.monotonic() > deadline:
                raise OperationFailed(
                    f"the standby at {here} replayed to {replay}, not past {lsn}, within "
                    f"{timeout:g}s"
                )
            time.sleep(0.1)


def promote(config: Config, name: str, timeout: float) -> dict[str, Any]:
    """Promote the standby here: the fence at its site first, then pg_promote, the
    first commit, and a closed first segment so the new direction starts at once."""
    oriented = config_for(config, "standby")
    connector, here, side = two_sided(oriented, name)
    site = oriented.sites[here]
    layout = SiteLayout.for_connector(site.root, connector.name)
    marker = Path(layout.promoted_marker)
    record = {
        "connector": connector.name,
        "by": "switchover",
        "state": "promoting",
        "at": time.time(),
        "at_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_marker(marker, record)
    with _connect(side.dsn) as conn:
        row = conn.execute("select pg_promote(true, %s)", (max(1, int(timeout)),)).fetchone()
        if not (row and row[0]):
            raise OperationFailed(f"pg_promote at {here} did not finish within {timeout:g}s")
        with conn.transaction():
            conn.execute("create temp table logship_switchover_check (at timestamptz)")
            conn.execute("insert into logship_switchover_check values (now())")
        first_commit = time.time()
        row = conn.execute(
            "select pg_walfile_name(pg_current_wal_lsn()), pg_current_wal_lsn()::text"
        ).fetchone()
        assert row is not None
        timeline = int(str(row[0])[:8], 16)
        switch_lsn = str(row[1])
        conn.execute("select pg_switch_wal()")
    record.update(state="promoted", new_timeline=timeline, first_commit_at=first_commit)
    write_marker(marker, record)
    append_journal(Path(layout.root) / JOURNAL_NAME, {"event": "switchover", **record})
    record_primary(config.logship.state_dir, connector.name, here)
    return {
        "site": here,
        "timeline": timeline,
        "first_commit_at": first_commit,
        "lsn": switch_lsn,
    }


def follow_settings(config: Config, connector: PostgresConnector) -> list[tuple[str, str]]:
    """postgresql.auto.conf lines for this site's database as a standby of the
    other side (`connector` oriented with this site as its standby): its own port
    and listeners (pg_rewind copies the other side's), replay of what is shipped
    here, archiving once it is promoted."""
    here = connector.site
    endpoint = parse_dsn(connector.standby.dsn, setting=f"sides.{here}.dsn")
    return standby_settings(endpoint, sys.executable, config.path.absolute(), connector, here)


def archive_settings(
    python: str, config_path: Path, connector: str, here: str
) -> list[tuple[str, str]]:
    """A two-sided connector's database archives through logship at whichever
    site it is the primary (while in recovery PostgreSQL archives nothing)."""
    argv = [python, "-m", "logship", "--config", str(config_path), "--this-site", here]
    command = shlex.join([*argv, "archive-wal", connector])
    return [
        ("archive_mode", "on"),
        ("archive_command", quote_conf_string(command.replace("%", "%%") + " %p")),
        ("archive_library", "''"),
    ]


def follow(config: Config, name: str) -> dict[str, Any]:
    """Start the cleanly stopped database here as a standby of the other side."""
    oriented = config_for(config, "standby")
    connector, here, side = two_sided(oriented, name)
    control = read_controldata(side.data_dir, side.bin_dir)
    if control.state != "shut down":
        raise SafetyRefusal(
            f"the database at {here} is {control.state!r}, not cleanly shut down: it may "
            f"hold WAL the new primary does not have; use `logship reinstate {name}`"
        )
    start_following(oriented, connector, side)
    record_primary(config.logship.state_dir, connector.name, _other(connector, here))
    return {"site": here, "following": _other(connector, here)}


def start_following(config: Config, connector: PostgresConnector, side: SideSection) -> None:
    """Configure the stopped database of `side` (this site; `connector` oriented with
    it as the standby) to replay what the other side ships here, and start it.

    Written before a fence comes off, and the fence then keeps the signal file: at
    no moment could the server start as a primary. An earlier PROMOTED marker at
    this site is retired, or the other side could never ship here again.
    """
    import pwd

    from logship.engines.postgresql.fence import fence_state, unfence

    running = running_server(side.data_dir)
    if running is not None:
        raise SafetyRefusal(f"{side.data_dir}: {running}; stop it first")
    write_recovery_config(
        side.data_dir,
        follow_settings(config, connector),
        header=f"# {FOLLOW_WRITER}: a standby of the other side (later lines win)",
        signal_name="standby.signal",
        hba=local_peer_hba(pwd.getpwuid(os.geteuid()).pw_name, f"Written by {FOLLOW_WRITER}."),
        writer=FOLLOW_WRITER,
    )
    if fence_state(side.data_dir) is not None:
        unfence(side.data_dir, keep_signal=True)
    retire_promoted(config, connector, connector.site)
    start_server(pg_ctl(side), side.data_dir, side.data_dir / LOG_NAME, what="the new standby")


def _other(connector: PostgresConnector, here: str) -> str:
    assert connector.sides is not None
    return next(side for side in connector.sides if side != here)


def retire_promoted(config: Config, connector: PostgresConnector, here: str) -> bool:
    """The PROMOTED marker of this site's earlier promotion: history now (kept in
    the journal), or the other side could never ship here again."""
    layout = SiteLayout.for_connector(config.sites[here].root, connector.name)
    marker = Path(layout.promoted_marker)
    try:
        content = marker.read_bytes()[:65536]
    except FileNotFoundError:
        return False
    try:
        earlier = json.loads(content)
    except ValueError:
        earlier = {"unreadable": True}
    append_journal(
        Path(layout.root) / JOURNAL_NAME,
        {
            "event": "retired",
            "at": time.time(),
            "earlier": earlier if isinstance(earlier, dict) else {},
        },
    )
    marker.unlink()
    return True


def fence_old_primary(config: Config, name: str, timeline: int) -> dict[str, Any]:
    """After the other side was promoted: fence this site's database when it is
    stopped and was a primary, so that started by hand it comes up read-only and
    says why (until `logship reinstate`). A running one is left alone and named."""
    from logship.engines.postgresql.fence import FenceReason, fence, fence_state

    connector, here, side = two_sided(config, name)
    if fence_state(side.data_dir) is not None:
        return {"site": here, "fenced": True, "why": "fenced already"}
    running = running_server(side.data_dir)
    if running is not None:
        return {"site": here, "fenced": False, "why": f"the server runs ({running})"}
    control = read_controldata(side.data_dir, side.bin_dir)
    if "recovery" in control.state or (side.data_dir / "standby.signal").exists():
        return {"site": here, "fenced": False, "why": "it is a standby, not an old primary"}
    fence(side.data_dir, FenceReason(connector.name, "failover", _other(connector, here), timeline))
    return {"site": here, "fenced": True, "why": f"was {control.state!r}"}
