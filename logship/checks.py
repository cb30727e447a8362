"""The checks behind `logship check`: each answers ok, warn or fail in one line.

Every check is a small function `check(name, ...) -> CheckResult`. `CheckRunner`
runs them, turns an exception into a fail line (a refused host key into a refusal)
and derives the exit code, so another pre-flight, such as promote's, can compose its
own list from the same pieces. `run_setup_checks` is the list `check` runs: the
checks every connector needs are here, each engine adds its own (`EngineChecks`).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from logship import __version__
from logship.config.model import Config, ConnectorBase, SiteConfig
from logship.durable import DIR_MODE, FILE_MODE
from logship.engines.registry import Engine, engine_for
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


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def describe_error(exc: BaseException) -> str:
    """One line: our own errors are already worded for the user; others get their type."""
    text = one_line(exc)
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
MAX_QUOTE = 200
_VERSION_LINE = re.compile(r"logship (\S+)")


def _quote_site(text: bytes) -> str:
    """The last non-empty line the site wrote, escaped and bounded: it is shown as is."""
    lines = [line for line in text.decode(errors="replace").splitlines() if line.strip()]
    last = printable(lines[-1].strip()) if lines else "no output"
    return last if len(last) <= MAX_QUOTE else last[:MAX_QUOTE] + "..."


def _site_run(transport: SftpTransport, argv: list[str]) -> tuple[int | None, bytes, bytes]:
    """Run `argv` at the site; exit status None when it did not finish in time."""
    try:
        return transport.run_command(argv, timeout=SITE_COMMAND_TIMEOUT)
    except TimeoutError:  # socket.timeout: no answer within the timeout
        return None, b"", f"no answer within {SITE_COMMAND_TIMEOUT:g}s".encode()


@dataclass(frozen=True)
class SiteCommandUse:
    """What an engine runs logship at the site for (`[sites.NAME] command`)."""

    #: without it the engine cannot work (rather than work slower)
    needed: bool
    #: what goes missing when the command does not run logship, for the check's line
    without_it: str


def check_site_logship(
    name: str, site: SiteConfig, transport: SftpTransport, use: SiteCommandUse
) -> tuple[CheckResult, str | None]:
    """`[sites.NAME] command` must run logship at the site when an engine there needs
    it (`use.needed`); a warning when it only helps.
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
    if use.needed:
        return fail(name, f"{problem} ({use.without_it})"), None
    return warn(name, f"{problem} ({use.without_it})"), None


# -- the `check` verb --------------------------------------------------------------------


class EngineChecks(Protocol):
    """An engine's part of `logship check`, beside the checks every connector gets."""

    #: what the engine runs logship at the site for
    site_command: SiteCommandUse

    def site_checks(
        self,
        site: SiteConfig,
        connectors: Sequence[ConnectorBase],
        transport: SftpTransport,
        runner: CheckRunner,
        site_logship: str | None,
    ) -> None:
        """Checks at `site` for this engine's `connectors` there, over `transport`;
        `site_logship` is the version logship runs at the site (None: it does not)."""
        ...

    def source_checks(self, config: Config, connector: ConnectorBase, runner: CheckRunner) -> None:
        """Checks of what `connector` protects, at this site (e.g. its database)."""
        ...


def _site_command_use(engines: Sequence[Engine]) -> SiteCommandUse:
    """The strictest of the engines' needs: one that cannot work without it decides."""
    uses = [engine.checks().site_command for engine in engines]
    return next((use for use in uses if use.needed), uses[0])


def _by_engine(connectors: Sequence[ConnectorBase]) -> dict[str, list[ConnectorBase]]:
    """Connectors grouped by kind, each group and each kind in the given order."""
    groups: dict[str, list[ConnectorBase]] = {}
    for connector in connectors:
        groups.setdefault(connector.kind, []).append(connector)
    return groups


def run_setup_checks(
    config: Config,
    connectors: Sequence[str],
    runner: CheckRunner,
    connect: Callable[[SiteConfig], SftpTransport] | None = None,
) -> None:
    """Local dirs, then each site over SSH, then what each connector protects."""
    if connect is None:
        from logship.ship.gated import connect as connect_any

        connect = connect_any  # type: ignore[assignment]  # GatedTransport for restricted sites
    selected = [config.connector(name) for name in connectors]
    runner.run("state-dir", check_private_dir, config.logship.state_dir)
    # A connector without a spool (a files connector) has no incoming folder either.
    spools = {
        c.name: spool
        for c in selected
        if (spool := engine_for(c.kind).spool_dir(config, c)) is not None
    }
    for connector_name, spool in spools.items():
        runner.run(f"spool {connector_name}", check_private_dir, spool)
        runner.run(f"spool-files {connector_name}", check_spool_files, spool)

    for site_name in sorted({connector.site for connector in selected}):
        site = config.sites[site_name]
        transport = runner.obtain(f"ssh {site_name}", connect_site, site, connect)
        if transport is None:
            continue
        try:
            runner.run(f"site-root {site_name}", check_site_root, site, transport)
            here = _by_engine([c for c in selected if c.site == site_name])
            use = _site_command_use([engine_for(kind) for kind in here])
            version = runner.obtain(
                f"site-logship {site_name}", check_site_logship, site, transport, use
            )
            for kind, group in here.items():
                engine_for(kind).checks().site_checks(site, group, transport, runner, version)
            for connector_name in spools:
                if config.connector(connector_name).site != site_name:
                    continue
                args = (site, connector_name, transport)
                runner.run(f"not-promoted {connector_name}", check_not_promoted, *args)
                runner.run(f"incoming {connector_name}", check_incoming, *args)
        finally:
            transport.close()

    for connector in selected:
        engine_for(connector.kind).checks().source_checks(config, connector, runner)
