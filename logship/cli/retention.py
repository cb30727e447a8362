"""`logship retention CONNECTOR [--dry-run] [--json]`: run at the primary site.

Deletes base backups at the site that [retention] no longer keeps, and the WAL only
they needed; asks the standby (over SSH) which WAL it still needs first.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from logship import jsonout
from logship.basebackup import postgres_connector
from logship.catalog.opening import open_catalog
from logship.config.files import config_path
from logship.config.load import load_config
from logship.retention import RetentionReport

if TYPE_CHECKING:
    pass

#: WAL names listed one by one up to this many; beyond, the first and the last
LIST_WAL = 8


def _size(count: int) -> str:
    from rich.filesize import decimal

    return decimal(count)


def _wal_line(names: tuple[str, ...]) -> str:
    if len(names) <= LIST_WAL:
        return ", ".join(names)
    return f"{names[0]} … {names[-1]}"


def render(report: RetentionReport) -> list[str]:
    """The human form: what went (or would go), the totals and the WAL cutoff."""
    verb = "would delete" if report.dry_run else "deleted"
    within = "none" if report.keep_within_s is None else f"{report.keep_within_s:g}s"
    header = (
        f"retention {report.connector} at site {report.site} "
        f"(keep_backups {report.keep_backups}, keep_within {within})"
    )
    lines = [header + (": dry run, nothing deleted" if report.dry_run else "")]
    lines.append(f"  kept backups: {', '.join(report.kept_backups) or 'none'}")
    for backup in report.deleted_backups:
        lines.append(
            f"  {verb} backup {backup.backup_id} ({_size(backup.stored_size)}, "
            f"start WAL {backup.start_wal or 'unknown'})"
        )
    for backup_id in report.deleted_incomplete:
        lines.append(f"  {verb} incomplete backup folder {backup_id}")
    if report.deleted_wal:
        lines.append(
            f"  {verb} {len(report.deleted_wal)} WAL file(s) "
            f"({_size(report.deleted_wal_bytes)}): {_wal_line(report.deleted_wal)}"
        )
    cutoff = report.cutoff_wal or "none (every WAL file stays)"
    lines.append(f"  WAL cutoff: {cutoff}: {report.cutoff_reason}")
    if report.standby_redo_wal:
        lines.append(f"  standby redo WAL: {report.standby_redo_wal}")
    lines.extend(f"  note: {note}" for note in report.notes)
    lines.append(
        f"  total {verb}: {len(report.deleted_backups)} backup(s), "
        f"{len(report.deleted_incomplete)} incomplete folder(s), "
        f"{len(report.deleted_wal)} WAL file(s), {_size(report.deleted_bytes)}"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    from logship.retention import fetch_standby_facts, run_retention
    from logship.ship.sftp import SftpTransport

    config = load_config(config_path(args.config))
    connector = postgres_connector(config, args.connector)
    catalog = open_catalog(config)
    try:
        transport = SftpTransport(config.site_of(connector))
        try:
            standby = fetch_standby_facts(config, connector.name, transport, time.time)
            report = run_retention(
                config,
                connector.name,
                transport,
                catalog,
                standby=standby,
                dry_run=args.dry_run,
                clock=time.time,
            )
        finally:
            transport.close()
    finally:
        catalog.close()
    if args.json:
        print(jsonout.dumps(report.to_json()))
    else:
        print("\n".join(render(report)))
    return 0
