"""One rich progress line per phase of a long standby-site action (restore, drill)."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from logship.engines.postgresql.standby_restore import ProgressCallback, RestoreProgress


@contextmanager
def phase_progress(
    enabled: bool, descriptions: Mapping[str, str]
) -> Iterator[ProgressCallback | None]:
    """A callback drawing one line per phase; a phase with a total gets a byte bar.

    Yields None when not `enabled` (not a terminal, or output meant for a program).
    """
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
                description = descriptions.get(progress.phase, progress.phase)
                tasks[progress.phase] = bar.add_task(description, total=progress.total, detail="")
            # Only phases that count bytes have a total; the others are single steps.
            detail = f"{decimal(progress.done)}/{decimal(progress.total)}" if progress.total else ""
            task = tasks[progress.phase]
            if progress.total:
                totals[task] = progress.total
            bar.update(task, completed=progress.done, total=progress.total, detail=detail)

        yield update
        finish_all()
