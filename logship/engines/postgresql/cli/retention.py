"""`logship retention CONNECTOR [--dry-run] [--json]`: run at the primary site.

Deletes base backups at the site that [retention] no longer keeps, and the WAL only
they needed; asks the standby (over SSH) which WAL it still needs first.

`logship retention --at-site [CONNECTOR]` runs the same at the standby site, on its
own folders, for a site whose primary key may delete nothing (`restricted = true`):
every postgresql connector when none is named.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import TYPE_CHECKING

from logship import jsonout
from logship.catalog.opening import open_catalog
from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.postgresql.base_backup import postgres_connector
from logship.engines.postgresql.retention import RetentionReport
from logship.errors import LogshipError, OperationFailed, SafetyRefusal, UsageError

if TYPE_CHECKING:
    from logship.config.model import Config

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
    if report.swept_temps:
        swept = "would sweep" if report.dry_run else "swept"
        lines.append(f"  {swept} {report.swept_temps} stale upload temp(s)")
    lines.extend(f"  note: {note}" for note in report.notes)
    lines.append(
        f"  total {verb}: {len(report.deleted_backups)} backup(s), "
        f"{len(report.deleted_incomplete)} incomplete folder(s), "
        f"{len(report.deleted_wal)} WAL file(s), {_size(report.deleted_bytes)}"
    )
    return lines


def _print(report: RetentionReport, as_json: bool) -> None:
    if as_json:
        print(jsonout.dumps(report.to_json()))
    else:
        print("\n".join(render(report)))


def run(args: argparse.Namespace) -> int:
    from logship.engines.postgresql.retention import fetch_standby_facts, run_retention
    from logship.ship.gated import connect

    config = load_config(
        config_path(args.config),
        this_site=args.this_site,
        role="standby" if args.at_site else "primary",
    )
    if args.at_site:
        return _at_site(config, args)
    if args.connector is None:
        raise UsageError("name a connector (or run `logship retention --at-site` at the site)")
    connector = postgres_connector(config, args.connector)
    site = config.site_of(connector)
    if site.restricted:
        # Its key there may delete nothing: the site runs retention itself.
        raise SafetyRefusal(
            f"site {site.name} is restricted: run `logship retention --at-site` at the standby site"
        )
    catalog = open_catalog(config)
    try:
        # A restricted site refuses every removal (RestrictedError, exit 3).
        transport = connect(config.site_of(connector))
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
    _print(report, args.json)
    return 0


def _at_site(config: Config, args: argparse.Namespace) -> int:
    """Retention at the standby site, on its own folders, from what the site holds."""
    from logship.engines.postgresql.engine import PostgresConnector

    if args.connector is not None:
        names = [postgres_connector(config, args.connector).name]
    else:
        names = [c.name for c in config.connectors.values() if isinstance(c, PostgresConnector)]
        if not names:
            raise UsageError("no postgresql connector is configured: no retention to run")
    failed = 0
    for name in names:
        try:
            report = _run_at_site(config, name, args.dry_run)
        except LogshipError as exc:
            if len(names) == 1:
                raise
            # One connector failing (its site folder unreadable) stops no other.
            print(f"logship retention: {name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        _print(report, args.json)
    return 1 if failed else 0


def _run_at_site(config: Config, name: str, dry_run: bool) -> RetentionReport:
    from logship.engines.postgresql.drill import scratch_lock, scratch_root
    from logship.manifest import SiteLayout

    connector = postgres_connector(config, name)
    layout = SiteLayout.for_connector(config.site_of(connector).root, connector.name)
    scratch = scratch_root(connector.drill.scratch_dir, layout, connector.standby.data_dir)
    # At the primary the scheduler never runs a drill and retention of one connector
    # together; cron at the site does not know of drills, their lock does.
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(scratch_lock(scratch))
        except OperationFailed as exc:
            if "another drill is running" not in str(exc):
                raise  # the folder itself is unusable: its own message says how
            raise OperationFailed(
                f"connector {connector.name}: a restore drill is running at this site "
                f"({scratch}): nothing was deleted; run retention again once it is done"
            ) from None
        return _retention_here(config, connector.name, dry_run)


def _retention_here(config: Config, name: str, dry_run: bool) -> RetentionReport:
    from logship.engines.postgresql.retention import run_retention
    from logship.engines.postgresql.standby_status import read_connector_standby_facts
    from logship.ship.localdir import LocalDirTransport

    connector = postgres_connector(config, name)
    site = config.site_of(connector)
    # The standby's needs, read here as `standby status` reads them.
    standby = read_connector_standby_facts(connector, site.root)
    return run_retention(
        config,
        connector.name,
        LocalDirTransport(),
        None,
        standby=standby,
        dry_run=dry_run,
        clock=time.time,
        at_site=True,
    )
