"""PostgreSQL's part of `logship check`: the standby answers through the site's
logship, and the primary hands each WAL segment to this connector's spool."""

from __future__ import annotations

import os
import pwd
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from logship.checks import (
    MAX_QUOTE,
    SITE_COMMAND_TIMEOUT,
    CheckResult,
    CheckRunner,
    SiteCommandUse,
    fail,
    ok,
    one_line,
    warn,
)
from logship.config.model import Config, ConnectorBase, SiteConfig
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.standby_status import ask_standby_status
from logship.errors import printable
from logship.ship.sftp import SftpTransport, where


class PostgresChecks:
    site_command = SiteCommandUse(
        needed=True, without_it="the daemon gets no standby facts, apply lag stays unknown"
    )

    def site_checks(
        self,
        site: SiteConfig,
        connectors: Sequence[ConnectorBase],
        transport: SftpTransport,
        runner: CheckRunner,
        site_logship: str | None,
    ) -> None:
        if site_logship is None:
            # Without logship at the site, one line says so; not one more per connector.
            return
        for connector in connectors:
            runner.run(
                f"standby-status {connector.name}",
                check_standby_status,
                site,
                connector.name,
                transport,
            )

    def source_checks(self, config: Config, connector: ConnectorBase, runner: CheckRunner) -> None:
        assert isinstance(connector, PostgresConnector)
        name = connector.name
        if connector.sides is not None:
            here = config.this_site
            way = f"{connector.primary_side} -> {connector.site}"
            if here != connector.primary_side:
                # The primary's checks run at the primary's site; here is its standby.
                runner.record(ok(f"role {name}", f"standby here ({here}); shipping {way}"))
                return
            runner.record(ok(f"role {name}", f"primary here ({here}); shipping {way}"))
        settings = runner.obtain(f"primary {name}", check_primary, connector)
        if settings is None:
            return
        spool = config.spool_dir(name)
        runner.run(f"wal_level {name}", check_wal_level, settings)
        runner.run(f"archive_mode {name}", check_archive_mode, settings)
        runner.run(f"archiving {name}", check_archiving, name, spool, config.path, settings)
        runner.run(f"archive_timeout {name}", check_archive_timeout, connector.rpo, settings)
        runner.run(f"spool-owner {name}", check_spool_owner, spool, settings)
        runner.run(f"read-ahead {name}", check_read_ahead, connector, settings)
        if connector.streaming.enabled:
            stream_checks(config.site_of(connector), connector, runner)


POSTGRESQL_CHECKS = PostgresChecks()


def stream_checks(site: SiteConfig, connector: PostgresConnector, runner: CheckRunner) -> None:
    """[streaming] enabled: the primary's replication settings, then the tunnel."""
    from logship.engines.postgresql.streaming import check as sc

    name = connector.name
    facts = runner.obtain(f"stream-primary {name}", sc.check_stream_primary, connector)
    if facts is None:
        return
    runner.run(f"wal_senders {name}", sc.check_wal_senders, facts)
    runner.run(f"replication_slots {name}", sc.check_replication_slots, facts, connector)
    runner.run(f"max_slot_wal_keep_size {name}", sc.check_slot_bound, facts, connector)
    runner.run(f"replication-role {name}", sc.check_replication_role, facts, connector)
    if connector.streaming.synchronous:
        runner.run(f"synchronous {name}", sc.check_sync_control, facts, connector)
    probe = runner.obtain(
        f"stream-forward {name}", sc.check_stream_forward, connector, site, facts.systemid
    )
    if probe is None:
        return
    if site.restricted:
        runner.run(f"stream-key {name}", sc.check_restricted_forwarding, probe, site)
    answer = runner.obtain(
        f"stream-login {name}", sc.check_stream_login, probe, facts.systemid, connector
    )
    if answer is not None:
        runner.run(f"stream-password {name}", sc.check_stream_password, answer, connector)


def check_standby_status(
    name: str, site: SiteConfig, connector: str, transport: SftpTransport
) -> CheckResult:
    """What the daemon asks at each sample: the site's logship must answer it."""
    command = shlex.join([*site.command, "standby", "status", connector, "--json"])
    try:
        facts, answered = ask_standby_status(
            transport, site.command, connector, time.time, SITE_COMMAND_TIMEOUT
        )
    except TimeoutError:
        facts, answered = None, False
    if not answered or facts is None:
        why = printable(facts.error) if facts is not None and facts.error else "no answer"
        return fail(
            name,
            f"{where(site)}: `{command}` gives no standby facts ({why[:MAX_QUOTE]}); "
            f"the daemon runs it for apply lag: fix logship's config at the site (connector "
            f"{connector}, [standby]) or the --config in [sites.{site.name}] command",
        )
    if not facts.reachable:
        why = printable(facts.error or "not reachable")[:MAX_QUOTE]
        return warn(
            name,
            f"logship at the site answers `standby status`, the standby does not ({why}); "
            f"start it, or restore it with `logship standby restore {connector}` there",
        )
    return ok(
        name,
        f"logship at the site answers `standby status`: the standby answers (in recovery: "
        f"{facts.in_recovery}, replay_lsn {printable(str(facts.replay_lsn))})",
    )


# -- the primary PostgreSQL --------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveSettings:
    server_version: str
    wal_level: str
    archive_mode: str
    archive_library: str
    archive_command: str
    archive_directory: str | None  # basic_archive.archive_directory
    archive_timeout_s: float
    data_directory: str | None  # None when the role may not read it


_SETTINGS_SQL = """
select current_setting('server_version'),
       current_setting('wal_level'),
       current_setting('archive_mode'),
       coalesce(current_setting('archive_library', true), ''),
       current_setting('archive_command'),
       current_setting('basic_archive.archive_directory', true),
       (select setting::float8 from pg_settings where name = 'archive_timeout')
"""


def read_archive_settings(dsn: str) -> ArchiveSettings:
    with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
        (row,) = conn.execute(_SETTINGS_SQL).fetchall()
        try:
            data_dir = conn.execute("select current_setting('data_directory')").fetchone()
        except psycopg.errors.InsufficientPrivilege:
            data_dir = None
    return ArchiveSettings(*row, data_directory=data_dir[0] if data_dir else None)


def check_primary(
    name: str, connector: PostgresConnector
) -> tuple[CheckResult, ArchiveSettings | None]:
    try:
        settings = read_archive_settings(connector.primary.dsn)
    except psycopg.errors.InsufficientPrivilege as exc:
        return fail(
            name,
            f"primary.dsn cannot read the archive settings: {one_line(exc)} "
            "(use a superuser or grant pg_read_all_settings)",
        ), None
    except psycopg.OperationalError as exc:
        return fail(name, f"cannot connect with primary.dsn: {one_line(exc)}"), None
    return ok(name, f"PostgreSQL {settings.server_version} answers on primary.dsn"), settings


def check_wal_level(name: str, settings: ArchiveSettings) -> CheckResult:
    if settings.wal_level in ("replica", "logical"):
        return ok(name, f"wal_level = {settings.wal_level}")
    return fail(
        name,
        f"wal_level = {settings.wal_level}: a standby cannot replay this WAL; "
        "set wal_level = replica (needs a restart)",
    )


def check_archive_mode(name: str, settings: ArchiveSettings) -> CheckResult:
    if settings.archive_mode in ("on", "always"):
        return ok(name, f"archive_mode = {settings.archive_mode}")
    return fail(
        name,
        f"archive_mode = {settings.archive_mode}: PostgreSQL hands no WAL to logship; "
        "set archive_mode = on (needs a restart)",
    )


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _config_option(tokens: Sequence[str]) -> str | None:
    for index, token in enumerate(tokens):
        if token == "--config" and index + 1 < len(tokens):
            return tokens[index + 1]
        if token.startswith("--config="):
            return token.removeprefix("--config=")
    return None


def check_archiving(
    name: str, connector: str, spool: Path, config_file: Path, settings: ArchiveSettings
) -> CheckResult:
    """PostgreSQL must hand each segment to logship's spool for this connector."""
    if settings.archive_library:
        if settings.archive_library != "basic_archive":
            return fail(
                name,
                f"archive_library = {settings.archive_library}: logship needs basic_archive "
                f"into {spool}, or archive_command running 'archive-wal {connector} %p'",
            )
        directory = settings.archive_directory
        if not directory or not _same_path(directory, spool):
            return fail(
                name,
                f"basic_archive.archive_directory = {directory or '(unset)'}: "
                f"must be this connector's spool {spool}",
            )
        return ok(name, f"archive_library = basic_archive into {spool}")

    command = settings.archive_command
    if settings.archive_mode not in ("on", "always"):
        # PostgreSQL shows archive_command as "(disabled)" then: nothing to judge.
        return warn(name, "archive_command cannot be checked while archive_mode is off")
    suggestion = shlex.join(["logship", "--config", str(config_file), "archive-wal", connector])
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    call = next(
        (i for i in range(len(tokens) - 1) if tokens[i : i + 2] == ["archive-wal", connector]),
        None,
    )
    if call is None:
        return fail(
            name,
            f"archive_command = {command!r} does not run 'archive-wal {connector}'; "
            f"set archive_command = '{suggestion} %p'",
        )
    if tokens[call + 2 : call + 3] != ["%p"]:
        return fail(name, f"archive_command = {command!r}: archive-wal {connector} needs %p next")
    used = _config_option(tokens[:call])
    if used is None:
        return warn(
            name,
            f"archive_command has no --config: archive-wal will read $LOGSHIP_CONFIG or "
            f"./logship.toml in the data directory; add --config {config_file}",
        )
    if not os.path.isabs(used):
        return warn(
            name,
            f"archive_command reads --config {used}, relative to PostgreSQL's data "
            f"directory; use the absolute {config_file}",
        )
    if not _same_path(used, config_file):
        return warn(
            name,
            f"archive_command reads --config {used}, this check read {config_file}: "
            "archive-wal may spool somewhere else",
        )
    return ok(name, f"archive_command runs 'archive-wal {connector} %p' with this config")


def check_archive_timeout(name: str, rpo_s: float, settings: ArchiveSettings) -> CheckResult:
    """A partly filled segment waits up to archive_timeout before it is handed over, so
    on a quiet primary that bounds the exposure from below."""
    timeout = settings.archive_timeout_s
    advice = f"set archive_timeout well below the rpo, e.g. '{max(1, int(rpo_s // 4))}s'"
    if timeout <= 0:
        return warn(
            name,
            f"archive_timeout = 0 (disabled): a quiet primary can keep a partly filled "
            f"segment past the rpo of {rpo_s:g}s; {advice}",
        )
    if timeout >= rpo_s:
        return warn(
            name,
            f"archive_timeout = {timeout:g}s is not below the rpo of {rpo_s:g}s; {advice}",
        )
    return ok(name, f"archive_timeout = {timeout:g}s, below the rpo of {rpo_s:g}s")


def _may_write_dir(path: Path, uid: int) -> bool:
    """Whether `uid` can reach `path` and create files in it, by mode bits.

    `os.access` answers for this process, which as root is always yes.
    """
    if uid == 0:
        return True
    try:
        user = pwd.getpwuid(uid)
        groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    except KeyError:
        groups = set()
    try:
        target = path.resolve(strict=True)
        chain = [(p.stat(), os.X_OK) for p in reversed(target.parents)]
        chain.append((target.stat(), os.W_OK | os.X_OK))
    except OSError:
        return False
    for st, want in chain:
        if st.st_uid == uid:
            bits = st.st_mode >> 6
        elif st.st_gid in groups:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        if bits & want != want:
            return False
    return True


def check_spool_owner(name: str, spool: Path, settings: ArchiveSettings) -> CheckResult:
    """archive-wal and basic_archive run as PostgreSQL's OS user: it must write the spool."""
    try:
        uid = os.stat(settings.data_directory or "").st_uid
    except OSError:
        return warn(
            name,
            "cannot tell which OS user runs PostgreSQL (data_directory unreadable here); "
            f"make sure it can write {spool}",
        )
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    if _may_write_dir(spool, uid):
        return ok(name, f"{spool}: writable by {user}, who runs PostgreSQL")
    return fail(
        name,
        f"{spool}: {user}, who runs PostgreSQL and so archive-wal, cannot write it "
        f"(chown -R {user} the state dir)",
    )


def check_read_ahead(
    name: str, connector: PostgresConnector, settings: ArchiveSettings
) -> CheckResult:
    """With [primary] data_dir the daemon reads pg_wal: it must be the primary's own
    and readable by the user running logship."""
    data_dir = connector.primary.data_dir
    if data_dir is None:
        return ok(
            name,
            "off: each segment ships from the spool once archive-wal has copied it; "
            f"set [primary] data_dir = {settings.data_directory or 'PGDATA'!r} to ship "
            "from pg_wal as soon as it is ready",
        )
    if settings.data_directory and not _same_path(data_dir, settings.data_directory):
        return fail(
            name,
            f"[primary] data_dir = {data_dir}, but the primary's data_directory is "
            f"{settings.data_directory}: set it to that",
        )
    marks = data_dir / "pg_wal" / "archive_status"
    if not os.access(marks, os.R_OK | os.X_OK):
        return fail(
            name,
            f"{marks}: not readable by this user, so the daemon cannot read ahead; run "
            "logship as PostgreSQL's OS user (or initdb --allow-group-access and its group)",
        )
    if settings.archive_library:
        return ok(
            name,
            f"ships from {data_dir / 'pg_wal'} as soon as a segment is ready; basic_archive "
            "still copies each one (archive-wal would only confirm it)",
        )
    wait = connector.primary.archive_wait
    return ok(
        name,
        f"ships from {data_dir / 'pg_wal'} as soon as a segment is ready; archive-wal "
        f"confirms it (waiting up to {wait:g} s while the daemon keeps up)",
    )
