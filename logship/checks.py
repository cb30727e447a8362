"""The checks behind `logship check`: each answers ok, warn or fail in one line.

Every check is a small function `check(name, ...) -> CheckResult`. `CheckRunner`
runs them, turns an exception into a fail line (a refused host key into a refusal)
and derives the exit code, so another pre-flight, such as promote's, can compose its
own list from the same pieces. `run_setup_checks` is the list `check` runs.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from logship import __version__
from logship.config.model import Config, SiteConfig
from logship.durable import DIR_MODE, FILE_MODE
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.standby_status import ask_standby_status
from logship.engines.registry import engine_for
from logship.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REFUSED,
    LogshipError,
    SafetyRefusal,
    printable,
)
from logship.manifest import SiteLayout
from logship.ship.sftp import SftpTransport, where

T = TypeVar("T")


class CheckStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    detail: str
    #: failed for safety (an unverifiable host): the run exits 3, not 1
    refused: bool = False


def ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name, CheckStatus.OK, detail)


def warn(name: str, detail: str) -> CheckResult:
    return CheckResult(name, CheckStatus.WARN, detail)


def fail(name: str, detail: str, *, refused: bool = False) -> CheckResult:
    return CheckResult(name, CheckStatus.FAIL, detail, refused)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def describe_error(exc: BaseException) -> str:
    """One line: our own errors are already worded for the user; others get their type."""
    text = _one_line(exc)
    if isinstance(exc, LogshipError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CheckRunner:
    """Runs checks in order, reporting each result as soon as it is known."""

    def __init__(self, on_result: Callable[[CheckResult], None] | None = None) -> None:
        self._results: list[CheckResult] = []
        self._on_result = on_result

    @property
    def results(self) -> tuple[CheckResult, ...]:
        return tuple(self._results)

    def record(self, result: CheckResult) -> CheckResult:
        self._results.append(result)
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _call(
        self, name: str, call: Callable[[], tuple[CheckResult, T | None]]
    ) -> tuple[CheckResult, T | None]:
        try:
            result, value = call()
        except SafetyRefusal as exc:  # an unverifiable host, an unprotected key
            result, value = fail(name, str(exc), refused=True), None
        except Exception as exc:  # a check that breaks is a failed check, not a crashed run
            result, value = fail(name, describe_error(exc)), None
        self.record(result)
        return result, value

    def run(self, name: str, check: Callable[..., CheckResult], *args: Any) -> CheckResult:
        return self._call(name, lambda: (check(name, *args), None))[0]

    def obtain(
        self, name: str, check: Callable[..., tuple[CheckResult, T | None]], *args: Any
    ) -> T | None:
        """Run a check that also yields what later checks need (a connection, settings);
        None when it failed, so the checks that depend on it are skipped."""
        return self._call(name, lambda: check(name, *args))[1]

    def count(self, status: CheckStatus) -> int:
        return sum(1 for result in self._results if result.status is status)

    @property
    def exit_code(self) -> int:
        if any(result.refused for result in self._results):
            return EXIT_REFUSED
        if self.count(CheckStatus.FAIL):
            return EXIT_FAILED
        return EXIT_OK


# -- local directories -------------------------------------------------------------------


def _create_private_dirs(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700.

    Run as root (`sudo logship check`), each new directory takes the owner of the one
    it is created in, so the service account that owns the state dir can still write
    into what check created.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE)
        directory.chmod(DIR_MODE)  # mkdir's mode is filtered by the umask
        if os.geteuid() == 0:
            parent = directory.parent.stat()
            os.chown(directory, parent.st_uid, parent.st_gid)


def check_private_dir(name: str, path: Path) -> CheckResult:
    if not path.exists():
        _create_private_dirs(path)
        return ok(name, f"{path}: created (mode 0700)")
    if not path.is_dir():
        return fail(name, f"{path}: exists but is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        return fail(name, f"{path}: not writable by {pwd.getpwuid(os.geteuid()).pw_name}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != DIR_MODE:
        return warn(name, f"{path}: mode {mode:04o}, expected 0700 (chmod 700 {path})")
    return ok(name, f"{path}: mode 0700")


def check_spool_files(name: str, spool: Path) -> CheckResult:
    loose: list[tuple[Path, int]] = []
    count = 0
    for root, _dirs, names in os.walk(spool):
        for file_name in names:
            path = Path(root) / file_name
            try:
                mode = stat.S_IMODE(path.lstat().st_mode)
            except FileNotFoundError:
                continue  # shipped and removed meanwhile
            count += 1
            if mode != FILE_MODE:
                loose.append((path, mode))
    if loose:
        path, mode = loose[0]
        return warn(
            name,
            f"{len(loose)} of {count} spool file(s) not mode 0600, e.g. {path} ({mode:04o}); "
            f"WAL holds every row written (chmod 600 them)",
        )
    return ok(name, f"{count} file(s), all mode 0600")


# -- the standby site --------------------------------------------------------------------


def connect_site(
    name: str, site: SiteConfig, connect: Callable[[SiteConfig], SftpTransport]
) -> tuple[CheckResult, SftpTransport]:
    transport = connect(site)  # HostKeyRefused becomes a refusal in the runner
    works = "site-gate (restricted key)" if site.restricted else "SFTP"
    detail = f"{where(site)}: host key matches {site.known_hosts}; key login and {works} work"
    return ok(name, detail), transport


def check_site_root(name: str, site: SiteConfig, transport: SftpTransport) -> CheckResult:
    root = site.root
    if site.restricted:
        # The key reaches only the connector folders below it; the site keeps the root.
        return ok(name, f"{where(site)}:{root}: restricted site, the root is the site's own")
    st_mode = transport.stat_mode(root)
    if st_mode is None:
        try:
            transport.makedirs(root)
        except OSError as exc:
            return fail(
                name,
                f"{where(site)}:{root} is missing and cannot be created: {describe_error(exc)}",
            )
        return ok(name, f"{where(site)}:{root}: created (mode 0700)")
    if not stat.S_ISDIR(st_mode):
        return fail(name, f"{where(site)}:{root} exists but is not a directory")
    mode = stat.S_IMODE(st_mode)
    if mode != DIR_MODE:
        return warn(
            name, f"{where(site)}:{root}: mode {mode:04o}, expected 0700 (chmod 700 {root})"
        )
    return ok(name, f"{where(site)}:{root}: directory, mode 0700")


def check_not_promoted(
    name: str, site: SiteConfig, connector: str, transport: SftpTransport
) -> CheckResult:
    marker = SiteLayout.for_connector(site.root, connector).promoted_marker
    if transport.read_bytes(marker) is not None:
        return fail(
            name,
            f"{where(site)}:{marker} exists: that standby was promoted, so nothing more is "
            "shipped to it (rebuild the standby before shipping again)",
        )
    return ok(name, "standby not promoted (no PROMOTED marker)")


def check_incoming(
    name: str, site: SiteConfig, connector: str, transport: SftpTransport
) -> CheckResult:
    """Write a probe the way shipped files are written (temp, fsync, rename), read it
    back and remove it."""
    directory = SiteLayout.for_connector(site.root, connector).root
    if site.restricted:
        # A probe could never be removed through a restricted key: only reach the folder.
        transport.makedirs(directory)
        free = transport.free_bytes(directory)
        room = f", {free / 2**30:.1f} GiB free" if free is not None else ""
        return ok(name, f"{where(site)}:{directory}: reachable through site-receive{room}")
    probe = directory / f".logship-check.{secrets.token_hex(4)}"
    payload = b"logship check probe\n"
    try:
        transport.makedirs(directory)
        try:
            transport.put_atomic(probe, [payload])
            read_back = transport.read_bytes(probe)
        finally:
            transport.remove(probe)
    except OSError as exc:
        return fail(name, f"{where(site)}:{directory}: not writable: {describe_error(exc)}")
    if read_back != payload:
        return fail(name, f"{where(site)}:{directory}: a probe file read back different")
    return ok(name, f"{where(site)}:{directory}: writable (probe written durably and removed)")


#: `--version` and `standby status` at the site: the latter reads the standby's
#: control file with a timeout of its own (30 s) when the standby does not answer
SITE_COMMAND_TIMEOUT = 60.0
#: what of the site's output goes into a check line
_MAX_QUOTE = 200
_VERSION_LINE = re.compile(r"logship (\S+)")


def _quote_site(text: bytes) -> str:
    """The last non-empty line the site wrote, escaped and bounded: it is shown as is."""
    lines = [line for line in text.decode(errors="replace").splitlines() if line.strip()]
    last = printable(lines[-1].strip()) if lines else "no output"
    return last if len(last) <= _MAX_QUOTE else last[:_MAX_QUOTE] + "..."


def _site_run(transport: SftpTransport, argv: list[str]) -> tuple[int | None, bytes, bytes]:
    """Run `argv` at the site; exit status None when it did not finish in time."""
    try:
        return transport.run_command(argv, timeout=SITE_COMMAND_TIMEOUT)
    except TimeoutError:  # socket.timeout: no answer within the timeout
        return None, b"", f"no answer within {SITE_COMMAND_TIMEOUT:g}s".encode()


def check_site_logship(
    name: str, site: SiteConfig, transport: SftpTransport, needed: bool
) -> tuple[CheckResult, str | None]:
    """`[sites.NAME] command` must run logship at the site: the daemon runs it there
    for `standby status` (a PostgreSQL connector's apply lag) and `tree-receive`.

    `needed` is False when only files connectors use the site: without it the mirror
    falls back to one SFTP request per file, which costs speed only.
    """
    command = shlex.join(site.command)
    status, out, err = _site_run(transport, [*site.command, "--version"])
    match = _VERSION_LINE.fullmatch(out.decode(errors="replace").strip())
    if status == 0 and match:
        version = match.group(1)
        detail = f"{where(site)}: `{command}` runs logship {printable(version)}"
        if version != __version__:
            return warn(name, f"{detail}, this primary runs {__version__}: upgrade one"), version
        return ok(name, detail), version
    said = _quote_site(err) if status != 0 else f"printed {_quote_site(out)!r}"
    exited = "did not finish" if status is None else f"exited {status}"
    problem = (
        f"{where(site)}: `{command} --version` {exited} ({said}): it does not run logship; "
        f"set [sites.{site.name}] command to how logship runs at the site, "
        'e.g. ["/opt/logship/bin/logship", "--config", "/etc/logship/logship.toml"]'
    )
    if needed:
        return fail(
            name, problem + " (the daemon gets no standby facts, apply lag stays unknown)"
        ), None
    return warn(name, problem + " (the files mirror falls back to per-file SFTP: slower)"), None


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
            f"{where(site)}: `{command}` gives no standby facts ({why[:_MAX_QUOTE]}); "
            f"the daemon runs it for apply lag: fix logship's config at the site (connector "
            f"{connector}, [standby]) or the --config in [sites.{site.name}] command",
        )
    if not facts.reachable:
        why = printable(facts.error or "not reachable")[:_MAX_QUOTE]
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
            f"primary.dsn cannot read the archive settings: {_one_line(exc)} "
            "(use a superuser or grant pg_read_all_settings)",
        ), None
    except psycopg.OperationalError as exc:
        return fail(name, f"cannot connect with primary.dsn: {_one_line(exc)}"), None
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


# -- the `check` verb --------------------------------------------------------------------


def run_setup_checks(
    config: Config,
    connectors: Sequence[str],
    runner: CheckRunner,
    connect: Callable[[SiteConfig], SftpTransport] | None = None,
) -> None:
    """Local dirs, then each site over SSH, then each primary's archive settings."""
    if connect is None:
        from logship.ship.gated import connect as connect_any

        connect = connect_any  # type: ignore[assignment]  # GatedTransport for restricted sites
    selected = [config.connector(name) for name in connectors]
    runner.run("state-dir", check_private_dir, config.logship.state_dir)
    # A files connector has no spool and no incoming folder: it mirrors its tree.
    spooled = [c for c in selected if engine_for(c.kind).uses_spool]
    for connector in spooled:
        spool = config.spool_dir(connector.name)
        runner.run(f"spool {connector.name}", check_private_dir, spool)
        runner.run(f"spool-files {connector.name}", check_spool_files, spool)

    for site_name in sorted({connector.site for connector in selected}):
        site = config.sites[site_name]
        transport = runner.obtain(f"ssh {site_name}", connect_site, site, connect)
        if transport is None:
            continue
        try:
            runner.run(f"site-root {site_name}", check_site_root, site, transport)
            here = [c for c in selected if c.site == site_name]
            databases = [c.name for c in here if isinstance(c, PostgresConnector)]
            version = runner.obtain(
                f"site-logship {site_name}", check_site_logship, site, transport, bool(databases)
            )
            # Without logship at the site, one line says so; not one more per connector.
            for connector_name in databases if version is not None else ():
                runner.run(
                    f"standby-status {connector_name}",
                    check_standby_status,
                    site,
                    connector_name,
                    transport,
                )
            for connector in spooled:
                if connector.site != site_name:
                    continue
                args = (site, connector.name, transport)
                runner.run(f"not-promoted {connector.name}", check_not_promoted, *args)
                runner.run(f"incoming {connector.name}", check_incoming, *args)
        finally:
            transport.close()

    for connector in selected:
        if not isinstance(connector, PostgresConnector):
            continue
        name = connector.name
        settings = runner.obtain(f"primary {name}", check_primary, connector)
        if settings is None:
            continue
        spool = config.spool_dir(name)
        runner.run(f"wal_level {name}", check_wal_level, settings)
        runner.run(f"archive_mode {name}", check_archive_mode, settings)
        runner.run(f"archiving {name}", check_archiving, name, spool, config.path, settings)
        runner.run(f"archive_timeout {name}", check_archive_timeout, connector.rpo, settings)
        runner.run(f"spool-owner {name}", check_spool_owner, spool, settings)
