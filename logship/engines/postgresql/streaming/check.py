"""Streaming's part of `logship check`: the primary's replication settings and slot
capacity, the site's leave to listen for the standby, and a login through the tunnel.

The settings are read once (`read_stream_primary`) and judged by small pure checks.
The tunnel is opened as the daemon opens it, on its own SSH connection; over that
same connection the site's logship runs `standby stream-check`, which logs in
through the tunnel exactly as the standby's walreceiver would. Its answer crosses
the site boundary and is validated before use (`probe.parse_answer`).
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, replace

import paramiko

from logship.checks import MAX_QUOTE, SITE_COMMAND_TIMEOUT, CheckResult, fail, ok, warn
from logship.config.model import SiteConfig
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.streaming.primary import MIB
from logship.engines.postgresql.streaming.probe import (
    ANSWER_LIMIT,
    BadAnswer,
    StreamAnswer,
    parse_answer,
)
from logship.engines.postgresql.streaming.settings import SITE_LISTEN_HOST, standby_name
from logship.engines.postgresql.streaming.tunnel import (
    ForwardRefused,
    SiteTunnel,
    primary_connector,
)
from logship.engines.postgresql.tools import parse_dsn
from logship.errors import first_line, shown_text
from logship.ship.sftp import open_client, where
from logship.ship.site_output import drain
from logship.ship.transport import SiteOutputTooLarge

_U64 = 1 << 64

# -- the primary's settings ------------------------------------------------------------


@dataclass(frozen=True)
class SlotFacts:
    wal_status: str | None
    retained_bytes: int | None


@dataclass(frozen=True)
class StreamPrimary:
    """What the primary says about streaming, as read over [primary].dsn."""

    role: str
    superuser: bool
    max_wal_senders: int
    senders_used: int
    #: our standby's walsender is among them (it keeps its sender)
    ours_connected: bool
    max_replication_slots: int
    slots_used: int
    slot: SlotFacts | None  # ours, None: not created yet
    max_slot_wal_keep_mb: int  # -1: unbounded
    may_set_keep: bool
    may_set_sync: bool
    sync_names: str
    #: the streaming role's (rolreplication, rolcanlogin); None: no such role
    stream_role: tuple[bool, bool] | None
    #: pg_control_system()'s; None: this role may not read it
    systemid: int | None


_SQL = """
select current_user, current_setting('is_superuser') = 'on',
       current_setting('max_wal_senders')::int,
       (select count(*) from pg_stat_replication)::int,
       exists (select 1 from pg_stat_replication where application_name = %(name)s),
       current_setting('max_replication_slots')::int,
       (select count(*) from pg_replication_slots)::int,
       (select setting::bigint from pg_settings where name = 'max_slot_wal_keep_size'),
       current_setting('synchronous_standby_names'),
       current_setting('server_version_num')::int
"""
_SLOT = """
select wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
from pg_replication_slots where slot_name = %(name)s
"""
_ROLE = "select rolreplication, rolcanlogin from pg_roles where rolname = %(user)s"
# ALTER SYSTEM on one setting and the reload after it: what the daemon does.
_MAY_ALTER = """
select has_parameter_privilege(%(setting)s, 'ALTER SYSTEM')
       and has_function_privilege('pg_reload_conf()', 'EXECUTE')
"""
_SYSTEMID = "select system_identifier::text from pg_control_system()"


def read_stream_primary(connector: PostgresConnector) -> StreamPrimary:
    import psycopg

    params = {"name": standby_name(connector.name), "user": connector.streaming.user}
    with psycopg.connect(connector.primary.dsn, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute(_SQL, params).fetchone()
        assert row is not None
        role, superuser, senders, used, ours, slots, slots_used, keep, names, version = row
        slot = conn.execute(_SLOT, params).fetchone()
        stream_role = conn.execute(_ROLE, params).fetchone()

        def may_alter(setting: str) -> bool:
            if superuser or version < 150000:  # no per-setting grants before 15
                return bool(superuser)
            answer = conn.execute(_MAY_ALTER, {"setting": setting}).fetchone()
            return bool(answer and answer[0])

        may_keep, may_sync = (
            may_alter("max_slot_wal_keep_size"),
            may_alter("synchronous_standby_names"),
        )
        try:
            found = conn.execute(_SYSTEMID).fetchone()
            systemid = int(found[0]) % _U64 if found else None
        except psycopg.errors.InsufficientPrivilege:
            systemid = None
    return StreamPrimary(
        role=role,
        superuser=bool(superuser),
        max_wal_senders=senders,
        senders_used=used,
        ours_connected=bool(ours),
        max_replication_slots=slots,
        slots_used=slots_used,
        slot=SlotFacts(slot[0], slot[1]) if slot else None,
        max_slot_wal_keep_mb=int(keep),
        may_set_keep=may_keep,
        may_set_sync=may_sync,
        sync_names=names,
        stream_role=(bool(stream_role[0]), bool(stream_role[1])) if stream_role else None,
        systemid=systemid,
    )


def check_stream_primary(
    name: str, connector: PostgresConnector
) -> tuple[CheckResult, StreamPrimary | None]:
    import psycopg

    try:
        facts = read_stream_primary(connector)
    except psycopg.Error as exc:
        return fail(
            name,
            f"primary.dsn cannot read the replication settings: {first_line(exc)} "
            "(use a superuser, or grant pg_read_all_settings and pg_read_all_stats)",
        ), None
    who = "a superuser" if facts.superuser else "not a superuser"
    return ok(name, f"replication settings read as role {facts.role} ({who})"), facts


def check_wal_senders(name: str, facts: StreamPrimary) -> CheckResult:
    free = facts.max_wal_senders - facts.senders_used
    said = f"max_wal_senders = {facts.max_wal_senders}, {facts.senders_used} in use"
    if facts.max_wal_senders <= 0:
        return fail(
            name,
            f"{said}: the primary sends no WAL to any standby; set max_wal_senders = 10 "
            "(needs a restart)",
        )
    if facts.ours_connected:
        return ok(name, f"{said}, one of them this standby's")
    if free <= 0:
        return fail(
            name,
            f"{said}: none free for this standby; raise max_wal_senders to "
            f"{facts.max_wal_senders + 2} (needs a restart)",
        )
    return ok(name, f"{said}: {free} free")


def check_replication_slots(
    name: str, facts: StreamPrimary, connector: PostgresConnector
) -> CheckResult:
    """A slot for this standby, and how much WAL it holds against the bound."""
    slot = standby_name(connector.name)
    bound = connector.streaming.max_slot_wal_keep
    said = f"max_replication_slots = {facts.max_replication_slots}, {facts.slots_used} in use"
    # pg_wal's free disk cannot be read over SQL: the operator is told what to leave.
    room = f"leave {bound / MIB:.0f} MiB free on pg_wal's disk for it"
    if facts.slot is None:
        if facts.slots_used >= facts.max_replication_slots:
            return fail(
                name,
                f"{said}: none free for slot {slot}; raise max_replication_slots to "
                f"{facts.max_replication_slots + 1} (needs a restart)",
            )
        return ok(name, f"{said}; slot {slot} not created yet (the daemon creates it); {room}")
    held = facts.slot.retained_bytes
    holds = "no WAL yet" if held is None else f"{held / MIB:.1f} MiB of WAL"
    status = facts.slot.wal_status or "unknown"
    detail = (
        f"slot {slot} holds {holds} of the {bound / MIB:.0f} MiB bound "
        f"([streaming].max_slot_wal_keep), wal_status {status}"
    )
    if status == "lost":
        return warn(
            name,
            f"{detail}: the standby was away longer than the bound allows; the daemon "
            "re-creates the slot and the standby catches up from shipped segments",
        )
    if status == "unreserved" or (held is not None and held > bound):
        return warn(name, f"{detail}: near its bound, the slot is about to be invalidated")
    return ok(name, f"{detail}; {room}")


def check_slot_bound(name: str, facts: StreamPrimary, connector: PostgresConnector) -> CheckResult:
    """max_slot_wal_keep_size no larger than [streaming].max_slot_wal_keep: without
    it, a long outage could fill the primary's disk with WAL held for the standby."""
    limit_mb = max(1, connector.streaming.max_slot_wal_keep // MIB)
    current = facts.max_slot_wal_keep_mb
    if 0 <= current <= limit_mb:
        return ok(name, f"max_slot_wal_keep_size = {current}MB, within {limit_mb}MB")
    shown = "-1 (unbounded)" if current < 0 else f"{current}MB"
    if facts.may_set_keep:
        return ok(
            name,
            f"max_slot_wal_keep_size = {shown}: the daemon lowers it to {limit_mb}MB "
            f"(role {facts.role} may ALTER SYSTEM it)",
        )
    return fail(
        name,
        f"max_slot_wal_keep_size = {shown}, above [streaming].max_slot_wal_keep "
        f"({limit_mb}MB), and role {facts.role} may not lower it: run "
        f"`ALTER SYSTEM SET max_slot_wal_keep_size = '{limit_mb}MB'; SELECT pg_reload_conf();` "
        "as a superuser",
    )


def check_replication_role(
    name: str, facts: StreamPrimary, connector: PostgresConnector
) -> CheckResult:
    user = connector.streaming.user
    if facts.stream_role is None:
        return fail(
            name,
            f"role {user} ([streaming].user) does not exist at the primary: "
            f"`CREATE ROLE {user} WITH REPLICATION LOGIN PASSWORD '...'`",
        )
    replication, login = facts.stream_role
    missing = [word for word, has in (("REPLICATION", replication), ("LOGIN", login)) if not has]
    if missing:
        return fail(
            name,
            f"role {user} lacks {' and '.join(missing)}: `ALTER ROLE {user} WITH "
            f"{' '.join(missing)}`",
        )
    return ok(name, f"role {user} has REPLICATION and LOGIN")


def check_sync_control(
    name: str, facts: StreamPrimary, connector: PostgresConnector
) -> CheckResult:
    """synchronous = true: the daemon sets synchronous_standby_names at the primary."""
    ours = standby_name(connector.name)
    names = facts.sync_names
    if names and names != ours:
        return fail(
            name,
            f"synchronous_standby_names = {shown_text(names, MAX_QUOTE)!r} at the primary, set "
            f"outside logship, which leaves it alone: commits would not wait for this standby; "
            f"`ALTER SYSTEM RESET synchronous_standby_names` (logship sets it to {ours})",
        )
    if not facts.may_set_sync:
        return fail(
            name,
            f"role {facts.role} may not set synchronous_standby_names: use a superuser in "
            f"[primary].dsn, or `GRANT ALTER SYSTEM ON PARAMETER synchronous_standby_names TO "
            f"{facts.role}; GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {facts.role}`",
        )
    state = f"{names} (this standby)" if names else "empty"
    return ok(name, f"synchronous_standby_names is {state}; role {facts.role} may set it")


# -- the tunnel ----------------------------------------------------------------------


@dataclass(frozen=True)
class TunnelProbe:
    """What `standby stream-check` at the site answered through the tunnel, or why
    there is no answer; `through_held` when the port was another listener's."""

    answer: StreamAnswer | None
    problem: str | None
    through_held: bool = False
    #: a restricted site: whether its key may open connections from the site
    #: (None: not asked, or no answer)
    opens_from_site: bool | None = None


def _site_argv(site: SiteConfig, connector: str) -> list[str]:
    words = ["standby", "stream-check", connector]
    # A restricted site's gate runs its own logship: the prefix is not sent.
    return words if site.restricted else [*site.command, *words]


#: where the local-forwarding probe asks to connect at the site: the discard port,
#: so that nothing is reached even where such forwarding is allowed
_PROBE_TARGET = ("127.0.0.1", 9)


def opens_from_site(client: paramiko.SSHClient, site: SiteConfig) -> bool | None:
    """Whether sshd lets this key open connections from the site (local forwarding,
    `direct-tcpip`): sshd answers "administratively prohibited" before it tries."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        return None
    try:
        channel = transport.open_channel(
            "direct-tcpip", _PROBE_TARGET, ("127.0.0.1", 0), timeout=site.connect_timeout
        )
    except paramiko.ChannelException as exc:
        return exc.code != paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
    except (paramiko.SSHException, OSError):
        return None
    channel.close()
    return True


def ask_site(client: paramiko.SSHClient, site: SiteConfig, connector: str) -> TunnelProbe:
    """Run `standby stream-check` at the site over `client`, and read its answer."""
    argv = _site_argv(site, connector)
    command = shlex.join(argv)
    what = f"site {site.name}: `{shlex.join(argv[-3:])}`"
    stdin, stdout, _ = client.exec_command(command, timeout=SITE_COMMAND_TIMEOUT)
    try:
        status, out, err = drain(stdout.channel, ANSWER_LIMIT, SITE_COMMAND_TIMEOUT, what)
    except (TimeoutError, SiteOutputTooLarge) as exc:
        return TunnelProbe(None, f"{shown_text(str(exc), MAX_QUOTE)}")
    finally:
        stdin.close()
    if not out.strip():
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        said = shown_text(lines[-1].strip(), MAX_QUOTE) if lines else "no output"
        return TunnelProbe(
            None,
            f"`{shown_text(command, MAX_QUOTE)}` exited {status} without an answer ({said}): "
            "logship at the site must know `standby stream-check` (same version as here) "
            f"and [streaming] for connector {connector}",
        )
    try:
        answer = parse_answer(out)
    except BadAnswer as exc:
        return TunnelProbe(None, f"{what} answered no stream-check line ({exc})")
    if (answer.error is None) != (status == 0):
        return TunnelProbe(None, f"{what} exited {status} with an answer that says otherwise")
    return TunnelProbe(answer, None)


def check_stream_forward(
    name: str, connector: PostgresConnector, site: SiteConfig, systemid: int | None
) -> tuple[CheckResult, TunnelProbe | None]:
    """sshd at the site must listen on its loopback for the standby, as the daemon asks.

    A port already taken may be the running daemon's own tunnel: that passes only
    when a login through that listener reaches this very primary.
    """
    port = connector.streaming.site_port
    setting = f"connector {connector.name}: [primary].dsn"
    endpoint = parse_dsn(connector.primary.dsn, setting=setting)
    tunnel = SiteTunnel(
        site, port, primary_connector(endpoint), connector.name, connector.streaming.user
    )
    try:
        tunnel.open()
    except ForwardRefused as refused:
        return _through_held(name, connector, site, systemid, refused)
    try:
        probe = ask_site(tunnel.client, site, connector.name)
        if site.restricted:
            probe = replace(probe, opens_from_site=opens_from_site(tunnel.client, site))
    finally:
        tunnel.close()
    return ok(
        name,
        f"sshd at {where(site)} listens on {SITE_LISTEN_HOST}:{port} for the standby when "
        "asked (this check's forward, cancelled after)",
    ), probe


def _through_held(
    name: str,
    connector: PostgresConnector,
    site: SiteConfig,
    systemid: int | None,
    refused: ForwardRefused,
) -> tuple[CheckResult, TunnelProbe | None]:
    client = open_client(site)
    try:
        probe = ask_site(client, site, connector.name)
        if site.restricted:
            probe = replace(probe, opens_from_site=opens_from_site(client, site))
    finally:
        client.close()
    answer = probe.answer
    port = connector.streaming.site_port
    if answer is not None and answer.error is None and systemid is not None:
        if answer.systemid == systemid:
            return ok(
                name,
                f"{SITE_LISTEN_HOST}:{port} at the site is already listened on (the running "
                "daemon's tunnel) and leads to this primary: this check's own forward was "
                "refused, a login through that listener reached systemid "
                f"{answer.systemid}",
            ), replace(probe, through_held=True)
        return fail(
            name,
            f"{refused} (what listens there now leads to another PostgreSQL, systemid "
            f"{answer.systemid})",
        ), None
    if answer is not None and answer.error is not None and "refused" not in answer.error:
        return fail(
            name,
            f"{refused} (something listens there now; logging in through it failed: "
            f"{answer.error[:MAX_QUOTE]})",
        ), None
    if probe.problem is not None:
        # The site could not say what listens there: that is worth a word too.
        return fail(name, f"{refused} (and: {probe.problem})"), None
    return fail(name, str(refused)), None


def hba_line(connector: PostgresConnector) -> str:
    """The pg_hba.conf line the forwarded connections need: they arrive from where
    the daemon joins them, [primary].dsn's first TCP host, else its socket."""
    user = connector.streaming.user
    endpoint = parse_dsn(connector.primary.dsn)
    if not endpoint.tcp_hosts:
        return f"local replication {user} scram-sha-256"
    host = endpoint.tcp_hosts[0]
    try:
        address = ipaddress.ip_address(host)
        source = f"{address}/{address.max_prefixlen}" if address.is_loopback else None
    except ValueError:
        source = "127.0.0.1/32" if host == "localhost" else None
    return f"host replication {user} {source or '<this host address>/32'} scram-sha-256"


def _login_fix(error: str, connector: PostgresConnector) -> str:
    streaming = connector.streaming
    user = streaming.user
    lowered = error.lower()
    if "pg_hba.conf" in lowered:  # no entry, or one that rejects
        return f"add `{hba_line(connector)}` to the primary's pg_hba.conf and reload it"
    if "password" in lowered:
        where_ = (
            f"[streaming].passfile {streaming.passfile} at the site"
            if streaming.passfile is not None
            else "a passfile at the site, named in [streaming].passfile"
        )
        return (
            f"put the role's password in {where_} (a line `*:*:*:{user}:PASSWORD`, mode 0600, "
            f"owned by the standby's OS user), or set it with `ALTER ROLE {user} PASSWORD ...`"
        )
    if "does not exist" in lowered or "not permitted" in lowered or "replication" in lowered:
        return f"`CREATE ROLE {user} WITH REPLICATION LOGIN PASSWORD '...'` (or ALTER ROLE)"
    if "max_wal_senders" in lowered or "too many" in lowered:
        return "raise max_wal_senders at the primary (needs a restart)"
    return (
        f"the primary's pg_hba.conf needs `{hba_line(connector)}`, the role a password in "
        "[streaming].passfile at the site"
    )


def check_stream_login(
    name: str, probe: TunnelProbe, systemid: int | None, connector: PostgresConnector
) -> tuple[CheckResult, StreamAnswer | None]:
    """The replication role logs in through the tunnel, to this very primary."""
    user = connector.streaming.user
    if probe.answer is None:
        return fail(name, probe.problem or "no answer from the site"), None
    answer = probe.answer
    if answer.error is not None:
        return fail(
            name,
            f"role {user} cannot log in through the tunnel with the standby's primary_conninfo "
            f"({answer.error[:MAX_QUOTE]}): {_login_fix(answer.error, connector)}",
        ), None
    said = f"systemid {answer.systemid}, timeline {answer.timeline}, at {answer.xlogpos}"
    if systemid is None:
        return warn(
            name,
            f"role {user} logs in through the tunnel ({said}), but role cannot read the "
            "primary's own systemid to compare: grant pg_monitor to [primary].dsn's role",
        ), answer
    if answer.systemid != systemid:
        return fail(
            name,
            f"the tunnel leads to another PostgreSQL ({said}; the primary's is {systemid}): "
            "the daemon joins it to [primary].dsn's first host; make that the primary",
        ), None
    return ok(
        name, f"role {user} logs in through the tunnel as the standby would: {said} (the primary)"
    ), answer


def check_stream_password(
    name: str, answer: StreamAnswer, connector: PostgresConnector
) -> CheckResult:
    user = connector.streaming.user
    port = connector.streaming.site_port
    if answer.needs_password:
        return ok(name, f"a login as {user} without its password is refused")
    return warn(
        name,
        f"role {user} logs in through the tunnel WITHOUT a password: anyone at the site who "
        f"reaches {SITE_LISTEN_HOST}:{port} gets the primary's WAL; give it one (`ALTER ROLE "
        f"{user} PASSWORD ...`), require it with `{hba_line(connector)}` first in pg_hba.conf, "
        "and put it in [streaming].passfile at the site",
    )


def check_restricted_forwarding(name: str, probe: TunnelProbe, site: SiteConfig) -> CheckResult:
    """A restricted key given the tunnel's port (`port-forwarding`) must not also
    open connections from the site: a compromised primary could reach the standby's
    PostgreSQL, or anything else the site reaches, through it."""
    if probe.opens_from_site is None:
        return warn(
            name,
            f"could not tell whether the restricted key may open connections from the site; "
            f"make sure `AllowTcpForwarding remote` applies to {site.user} in its sshd_config",
        )
    if probe.opens_from_site:
        return fail(
            name,
            f"the restricted key may open connections from the site (local forwarding), "
            f"which restricted mode must not allow: set `AllowTcpForwarding remote` for "
            f"{site.user} in the site's sshd_config (e.g. in a `Match User {site.user}` block)",
        )
    return ok(name, "the restricted key may listen for the tunnel, and open nothing from the site")
