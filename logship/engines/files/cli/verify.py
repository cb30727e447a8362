"""`logship verify CONNECTOR [--json]`: run at the primary site, for a files connector.

Compares the source tree with the site's copy (type, mode, size, sha256, link
target per path) and records the outcome, which `status`, the dashboard and the
alerts show. Exit 0 when clean, 1 on drift or when it could not compare.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from logship import jsonout
from logship.catalog.opening import open_catalog
from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.files.engine import files_connector
from logship.engines.files.verify import VerifyReport, display_path
from logship.engines.files.verify_run import run_verify
from logship.errors import EXIT_FAILED, LogshipError

if TYPE_CHECKING:
    pass

#: differences listed one by one; the totals count them all (--json lists all)
SHOW_DIFFERENCES = 50


def render(report: VerifyReport) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    if report.differences:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
        table.add_column("path", overflow="fold")
        table.add_column("difference (source → site)", overflow="fold")
        for difference in report.differences[:SHOW_DIFFERENCES]:
            # Text(), not markup: a file name may contain "[" and "]".
            table.add_row(Text(display_path(difference.path)), Text(difference.describe()))
        if hidden := report.drift - SHOW_DIFFERENCES:
            table.caption = f"… and {hidden} more (see --json)"
        console.print(table)
    style = "green" if report.clean else "bold red"
    console.print(Text(report.summary(), style=style))
    if not report.pending_known:
        console.print(
            Text("no files connector state in the catalog: no path counted as pending", style="dim")
        )


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config), this_site=args.this_site)
    connector = files_connector(config, args.connector)
    catalog = open_catalog(config)
    try:
        report = run_verify(config, connector.name, catalog, time.time)
    except LogshipError as exc:
        if args.json:
            failed = {"connector": connector.name, "state": "failed", "error": str(exc)}
            print(jsonout.dumps(failed))
        print(f"logship verify: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        catalog.close()
    if args.json:
        print(jsonout.dumps(report.to_json()))
    else:
        render(report)
    return 0 if report.clean else EXIT_FAILED
