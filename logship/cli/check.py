"""`logship check [CONNECTOR]`: config, SSH (host key), dirs and archive settings.

One line per check. Exit 0 when nothing failed, 1 when something did, 3 when a
site's host key was refused; a config that does not load exits 2 before any check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from logship import roles
from logship.checks import CheckResult, CheckRunner, CheckStatus, ok, run_setup_checks
from logship.cli.status import selected_connectors
from logship.config.files import config_path
from logship.config.load import load_config

_MARKS = {
    CheckStatus.OK: "[green]✓ ok  [/]",
    CheckStatus.WARN: "[yellow]! warn[/]",
    CheckStatus.FAIL: "[bold red]✗ fail[/]",
}


def _printer() -> Callable[[CheckResult], None]:
    if not sys.stdout.isatty():
        # Logs and scripts get plain lines: "<status> <check>: <detail>".
        def plain(result: CheckResult) -> None:
            print(f"{result.status:<4} {result.name}: {result.detail}", flush=True)

        return plain

    console = Console(highlight=False)

    def rich_line(result: CheckResult) -> None:
        console.print(
            f"{_MARKS[result.status]} [bold]{escape(result.name)}[/]: {escape(result.detail)}"
        )

    return rich_line


def run(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    # A ConfigError exits 2 with its one line; roles as the databases say now.
    config = roles.settled(load_config(path, this_site=args.this_site), record=False)
    names = selected_connectors(config, args.connector)
    runner = CheckRunner(on_result=_printer())
    runner.record(
        ok("config", f"{path}: {len(config.connectors)} connector(s), {len(config.sites)} site(s)")
    )
    run_setup_checks(config, names, runner)
    counts = ", ".join(f"{runner.count(status)} {status}" for status in CheckStatus)
    print(f"check: {counts}", flush=True)
    return runner.exit_code
