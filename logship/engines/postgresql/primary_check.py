"""Is the primary down? Asked from the standby site, where a socket DSN proves nothing."""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

from logship.engines.postgresql.engine import PrimarySection
from logship.engines.postgresql.tools import parse_dsn
from logship.errors import first_line

PRIMARY_TIMEOUT_S = 3.0
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def primary_check_dsn(primary: PrimarySection, setting: str) -> tuple[str | None, str]:
    """The DSN that reaches the primary from here, and what it is; or None and why not."""
    if primary.check_dsn:
        parse_dsn(primary.check_dsn, setting=f"{setting}.check_dsn")
        return primary.check_dsn, f"{setting}.check_dsn"
    endpoint = parse_dsn(primary.dsn, setting=f"{setting}.dsn")
    if endpoint.socket_dirs:
        return None, (
            f"{setting}.dsn uses a Unix socket ({', '.join(endpoint.socket_dirs)}), which "
            "proves nothing at the standby site; set [primary].check_dsn to a TCP DSN that "
            "reaches the primary from here"
        )
    loopback = [h for h in endpoint.tcp_hosts if _is_loopback(h)]
    if loopback or not endpoint.tcp_hosts:
        shown = ", ".join(loopback) or "libpq's default"
        return None, (
            f"{setting}.dsn reaches {shown}, which at the standby site is this host, not the "
            "primary; set [primary].check_dsn to a TCP DSN that reaches the primary from here"
        )
    return primary.dsn, f"{setting}.dsn (TCP)"


@dataclass(frozen=True)
class PrimaryAnswer:
    answers: bool | None  # None: could not tell (a name that does not resolve)
    detail: str
    checked_at: float


def probe_primary(dsn: str, timeout: float = PRIMARY_TIMEOUT_S) -> PrimaryAnswer:
    """Does anything answer at the primary's address? TCP first, then libpq for detail.

    An open port is an answer whatever libpq then says: a server that refuses our
    login (pg_hba, password) is still a running primary that may take commits.
    """
    endpoint = parse_dsn(dsn)
    reasons: list[str] = []
    answered: list[str] = []
    unresolved = False
    for host in endpoint.tcp_hosts:
        where = f"{host}:{endpoint.port}"
        try:
            with socket.create_connection((host, endpoint.port), timeout=timeout):
                answered.append(where)
        except socket.gaierror as exc:
            unresolved = True
            reasons.append(f"{where}: name does not resolve ({exc.strerror})")
        except TimeoutError:
            reasons.append(f"{where}: no answer within {timeout:g}s")
        except OSError as exc:
            reasons.append(f"{where}: {exc.strerror or exc}")
    now = time.time()
    if answered:
        return PrimaryAnswer(True, f"{', '.join(answered)} accepts connections{_libpq(dsn)}", now)
    if unresolved:
        return PrimaryAnswer(None, "; ".join(reasons), now)
    return PrimaryAnswer(False, "; ".join(reasons) or "no TCP host to try", now)


def _libpq(dsn: str) -> str:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=int(PRIMARY_TIMEOUT_S), autocommit=True) as c:
            (in_recovery,) = c.execute("select pg_is_in_recovery()").fetchone()  # type: ignore[misc]
    except psycopg.Error as exc:
        return f" (login failed: {first_line(exc)})"
    return " (a PostgreSQL in recovery)" if in_recovery else " (a PostgreSQL taking writes)"
