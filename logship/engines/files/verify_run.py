"""Running `verify` for a files connector: hash the source here, ask the site for its
listing over SSH (`logship tree-digest`), compare, record in the catalog.

Both the `verify` verb and the scheduler's "verify" action come through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING

from logship.catalog.store import Catalog
from logship.config.model import Config
from logship.engines.files.digest import (
    DigestEnd,
    DigestEntry,
    DigestFormatError,
    digest_tree,
    parse_line,
)
from logship.engines.files.engine import FilesConnector, files_connector
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.modes import site_mode
from logship.engines.files.rows import pending_paths
from logship.engines.files.scan import EntryKind, lstat_entry
from logship.engines.files.verify import VerifyReport, compare
from logship.engines.files.verify_rows import finish_verify, start_verify
from logship.errors import LogshipError, OperationFailed, first_line
from logship.logs import event

if TYPE_CHECKING:
    from logship.ship.transport import Transport

log = logging.getLogger("logship.verify")

Clock = Callable[[], float]
#: the site hashes its whole tree before the listing ends; a large tree takes long
VERIFY_SSH_TIMEOUT_S = 3600.0
#: the site's whole listing is held in memory: about 200 bytes a file, so this is
#: some five million files; more is refused as an error rather than grown into
DIGEST_OUTPUT_LIMIT = 1024 * 1024 * 1024


def _lines(out: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(out):
        end = out.find(b"\n", start)
        if end == -1:
            end = len(out)
        yield out[start:end]
        start = end + 1


def site_listing(status: int, out: bytes, err: bytes, site_name: str) -> Iterator[DigestEntry]:
    """The entries of `tree-digest` output, one by one; OperationFailed when the
    listing is malformed, reports an error, or stops before its end line."""
    where = f"tree-digest at site {site_name}"
    count = 0
    for number, line in enumerate(_lines(out), start=1):
        if not line.strip():
            continue
        try:
            item = parse_line(line)
        except DigestFormatError as exc:
            raise OperationFailed(f"{where}: line {number}: {exc}") from None
        if isinstance(item, DigestEnd):
            if item.error is not None:
                raise OperationFailed(f"{where}: {item.error}")
            if item.count != count:
                raise OperationFailed(
                    f"{where}: listing announced {item.count} entries but carried {count}"
                )
            return
        count += 1
        yield item
    reason = err.decode("utf-8", "replace").strip().splitlines()
    raise OperationFailed(
        f"{where} exited {status} before its listing was complete: "
        + (reason[-1] if reason else "no output")
    )


def _settle(report: VerifyReport, connector: FilesConnector) -> VerifyReport:
    """Differences at paths that changed here while verify ran become pending: the
    scan saw one version and the site may have got the next."""
    moved = set()
    for difference in report.differences:
        before = difference.source
        now = lstat_entry(connector.source, difference.path)
        if before is None or now is None:
            changed = (before is None) != (now is None)
        else:
            mode = _site_mode(now.kind, now.mode, connector)
            changed = (now.kind, mode, now.size, now.mtime_ns, now.link_target) != (
                before.kind,
                before.mode,
                before.size,
                before.mtime_ns,
                before.link_target,
            )
        if changed:
            moved.add(difference.path)
    if not moved:
        return report
    return replace(
        report,
        differences=[d for d in report.differences if d.path not in moved],
        pending=sorted([*report.pending, *moved]),
    )


def _site_mode(kind: EntryKind, mode: int, connector: FilesConnector) -> int:
    """The mode the files connector gives the site for a source path of this kind and mode."""
    if kind is EntryKind.SYMLINK:
        return mode  # a link's own mode is never set nor compared
    folder = kind is EntryKind.DIR
    return site_mode(mode, folder=folder, keep_write_bits=connector.keep_write_bits)


def _as_shipped(entry: DigestEntry, connector: FilesConnector) -> DigestEntry:
    """A source entry with the mode the site should have: setuid, setgid, sticky
    and (unless kept) group/other write are stripped by the files connector, not drift."""
    return replace(entry, mode=_site_mode(entry.kind, entry.mode, connector))


def compare_with_site(
    config: Config, connector: FilesConnector, transport: Transport, catalog: Catalog
) -> VerifyReport:
    """Hash the source while the site hashes its copy, then compare the two."""
    site = config.site_of(connector)
    if not connector.source.is_dir():
        raise OperationFailed(f"{connector.name}: source {connector.source} is not a folder")
    rules = ExcludeRules(connector.exclude)
    argv = [*site.command, "tree-digest", connector.name]
    before = set(pending_paths(catalog, connector.name))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tree-digest") as pool:
        remote = pool.submit(transport.run_command, argv, VERIFY_SSH_TIMEOUT_S, DIGEST_OUTPUT_LIMIT)
        local = [_as_shipped(entry, connector) for entry in digest_tree(connector.source, rules)]
        try:
            status, out, err = remote.result()
        except LogshipError:
            raise
        except Exception as exc:  # paramiko's SSHException, a socket error, a timeout
            raise OperationFailed(
                f"site {site.name}: tree-digest over SSH failed: {first_line(exc)}"
            ) from None
    after = set(pending_paths(catalog, connector.name))
    # Pending before the scans or after them: either way its change is in flight.
    pending = before | after
    report = compare(
        local,
        site_listing(status, out, err, site.name),
        delete=connector.delete,
        pending=pending,
        connector=connector.name,
        site_name=site.name,
        target=str(connector.standby.target),
    )
    return _settle(report, connector)


def run_verify(
    config: Config,
    name: str,
    catalog: Catalog,
    clock: Clock,
    *,
    transport: Transport | None = None,
) -> VerifyReport:
    """Verify connector `name` and record the run; without `transport` one SSH
    connection to its site is opened (and closed) here.

    Raises LogshipError (one line) when it cannot compare; the catalog then holds
    the failed run. Drift is not an exception here: the report says so.
    """
    connector = files_connector(config, name)
    verify_id = start_verify(catalog, name, clock())
    try:
        if transport is None:
            from logship.ship.sftp import SftpTransport

            own = SftpTransport(config.site_of(connector))
            try:
                report = compare_with_site(config, connector, own, catalog)
            finally:
                own.close()
        else:
            report = compare_with_site(config, connector, transport, catalog)
    except BaseException as exc:
        error = first_line(exc) if isinstance(exc, Exception) else "interrupted"
        finish_verify(catalog, verify_id, now=clock(), error=error)
        event(log, logging.ERROR, "verify failed", connector=name, error=error)
        raise
    finish_verify(catalog, verify_id, now=clock(), report=report)
    event(
        log,
        logging.INFO if report.clean else logging.WARNING,
        "verify clean" if report.clean else "verify found drift",
        connector=name,
        checked=report.checked,
        drift=report.drift,
        pending=len(report.pending),
        kept=len(report.kept),
    )
    return report
