"""`logship standby restore|status CONNECTOR`: run at the standby site."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from logship.basebackup import postgres_connector
from logship.config.files import config_path
from logship.config.load import load_config
from logship.config.model import Config
from logship.replay.standby_restore import ProgressCallback, RestoreProgress, restore_standby
from logship.replay.standby_status import read_standby_facts

_PHASES = {
    "extract": "extracting and checking sha256",
    "verify": "pg_verifybackup",
    "configure": "configuring recovery",
    "start": "starting the standby",
}


@contextmanager
def _progress(enabled: bool) -> Iterator[ProgressCallback | None]:
    """One rich line per phase on a terminal; the extract phase gets a byte bar."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stdout)) as bar:
        tasks: dict[str, TaskID] = {}
        totals: dict[TaskID, float] = {}

        def finish_all() -> None:
            for task in tasks.values():
                total = totals.get(task) or 1
                bar.update(task, total=total, completed=total)

        def update(progress: RestoreProgress) -> None:
            if progress.phase not in tasks:
                finish_all()  # a new phase means the previous ones are done
                description = _PHASES.get(progress.phase, progress.phase)
                tasks[progress.phase] = bar.add_task(description, total=progress.total, detail="")
            # Only the extract phase counts bytes; the others are single steps.
            detail = f"{decimal(progress.done)}/{decimal(progress.total)}" if progress.total else ""
            task = tasks[progress.phase]
            if progress.total:
                totals[task] = progress.total
            bar.update(task, completed=progress.done, total=progress.total, detail=detail)

        yield update
        finish_all()


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config))
    if args.standby_action == "status":
        return _status(config, args)
    with _progress(sys.stdout.isatty()) as on_progress:
        restored = restore_standby(config, args.connector, args.backup, on_progress)
    print(
        f"standby {args.connector}: restored backup {restored.record.backup_id} into "
        f"{restored.data_dir} and started it on port {restored.port} (replaying through "
        f"restore-wal; server log {restored.log_file})"
    )
    return 0


def _status(config: Config, args: argparse.Namespace) -> int:
    connector = postgres_connector(config, args.connector)
    site = config.site_of(connector)
    facts = read_standby_facts(connector.name, connector.standby.dsn, Path(site.root))
    if args.json:
        print(facts.to_json())
        return 0
    for key, value in asdict(facts).items():
        print(f"{key:18} {value}")
    return 0 if facts.reachable else 1
