"""What both sites must agree on for streaming: the slot's and the standby's name,
and the connection string the standby's walreceiver uses.

Written by `standby restore` and kept current by `standby status` at the site;
used by the daemon at the primary to find its standby in pg_stat_replication.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from logship.engines.postgresql.engine import PostgresConnector

#: where sshd at the site listens for the standby: never beyond that host
SITE_LISTEN_HOST = "127.0.0.1"
#: PostgreSQL's limit for slot and application names (NAMEDATALEN - 1)
_NAME_MAX = 63
_NOT_IN_NAME = re.compile(r"[^a-z0-9_]")


def standby_name(connector: str) -> str:
    """The replication slot's name, and the application_name the standby connects
    with: a plain lower-case identifier, so that it needs no quoting in
    synchronous_standby_names. A connector name that had to be changed to fit gets
    a hash of the original, so that two connectors never share a slot."""
    plain = _NOT_IN_NAME.sub("_", connector.lower())
    name = f"logship_{plain}"
    if plain != connector or len(name) > _NAME_MAX:
        digest = hashlib.sha256(connector.encode()).hexdigest()[:8]
        name = f"{name[: _NAME_MAX - 9]}_{digest}"
    return name


def standby_conninfo(connector: PostgresConnector) -> str:
    """primary_conninfo for the standby: the tunnel's port on the site's loopback."""
    from psycopg.conninfo import make_conninfo

    streaming = connector.streaming
    params = {
        "host": SITE_LISTEN_HOST,
        "port": str(streaming.site_port),
        "user": streaming.user,
        "application_name": standby_name(connector.name),
        "connect_timeout": "10",
        # Inside SSH already; the tunnel declines both, and says so at once.
        "sslmode": "disable",
        "gssencmode": "disable",
    }
    if streaming.passfile is not None:
        params["passfile"] = str(streaming.passfile)
    return make_conninfo("", **params)


def standby_stream_values(connector: PostgresConnector) -> tuple[str, str]:
    """(primary_conninfo, primary_slot_name) for the standby: the tunnel when
    streaming is on; empty otherwise, so that no database port crosses sites and
    no stale setting streams by surprise."""
    if not connector.streaming.enabled:
        return "", ""
    return standby_conninfo(connector), standby_name(connector.name)


def standby_stream_settings(connector: PostgresConnector) -> list[tuple[str, str]]:
    """The same as (name, postgresql.conf literal) pairs, for `standby restore`."""
    from logship.engines.postgresql.tools import quote_conf_string

    conninfo, slot = standby_stream_values(connector)
    return [
        ("primary_conninfo", quote_conf_string(conninfo)),
        ("primary_slot_name", quote_conf_string(slot)),
    ]


def keep_standby_current(connector: PostgresConnector) -> bool:
    """Bring a running standby's streaming settings in line with the config (turned
    on or off, another port or role) without a restart: both are reloadable.
    True when something was changed. Raises psycopg.Error when the standby could
    not be asked or changed (its DSN's role needs superuser for ALTER SYSTEM)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    conninfo, slot = standby_stream_values(connector)
    with psycopg.connect(connector.standby.dsn, connect_timeout=5, autocommit=True) as conn:
        (in_recovery, current_conninfo, current_slot) = conn.execute(
            "select pg_is_in_recovery(), current_setting('primary_conninfo'),"
            " current_setting('primary_slot_name')"
        ).fetchone()
        if not in_recovery:
            return False
        same_conninfo = (
            conninfo_to_dict(current_conninfo) == conninfo_to_dict(conninfo)
            if current_conninfo and conninfo
            else current_conninfo == conninfo
        )
        if same_conninfo and current_slot == slot:
            return False
        for name, value in (("primary_conninfo", conninfo), ("primary_slot_name", slot)):
            statement = sql.SQL("alter system set {} = {}").format(
                sql.Identifier(name), sql.Literal(value)
            )
            conn.execute(statement)
        conn.execute("select pg_reload_conf()")
    return True
