"""`logship base-backup CONNECTOR`: take a base backup and stream it to the standby site."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.postgresql.base_backup import (
    BackupProgress,
    ProgressCallback,
    postgres_connector,
)


@contextmanager
def progress_bar(enabled: bool, description: str) -> Iterator[ProgressCallback | None]:
    """A rich progress bar on stdout when `enabled`; otherwise no callback at all."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("shipped {task.fields[stored]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stdout)) as bar:
        task = bar.add_task(description, total=None, stored=decimal(0))

        def update(progress: BackupProgress) -> None:
            # pg_basebackup's total is an estimate that the appended WAL exceeds.
            total = progress.total_bytes
            if total is not None:
                total = max(total, progress.raw_bytes)
            bar.update(
                task,
                completed=progress.raw_bytes,
                total=total,
                stored=decimal(progress.stored_bytes),
            )

        yield update


def _cancel_on_signals() -> threading.Event:
    """SIGTERM and Ctrl-C ask the backup to stop between two writes: the temp file
    at the site is removed and the catalog says "interrupted". An exception raised
    at any other moment could land inside an SFTP exchange and leave the
    connection unable to clean up."""
    cancel = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        cancel.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return cancel


def run(args: argparse.Namespace) -> int:
    from logship.engines.postgresql.base_backup import take_base_backup
    from logship.ship.gated import connect

    cancel = _cancel_on_signals()
    config = load_config(config_path(args.config), this_site=args.this_site, role="primary")
    connector = postgres_connector(config, args.connector)
    site = config.site_of(connector)
    started = time.monotonic()
    transport = connect(site)
    try:
        with progress_bar(sys.stdout.isatty(), f"base backup {connector.name}") as on_progress:
            record = take_base_backup(
                config, connector.name, transport, time.time, on_progress, cancel=cancel
            )
    finally:
        transport.close()
    from rich.filesize import decimal

    print(
        f"base backup {record.backup_id} of {connector.name}: {decimal(record.size)} read, "
        f"{decimal(record.stored_size)} stored ({record.compression}) at site {site.name} "
        f"in {time.monotonic() - started:.1f}s, sha256 {record.stored_sha256}"
    )
    return 0
