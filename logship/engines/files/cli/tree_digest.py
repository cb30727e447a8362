"""`logship tree-digest CONNECTOR`: run at the standby site, by `verify` over SSH.

Lists `[standby].target` with the source's exclude rules, one JSON object per
line (see logship.engines.files.digest), ending with a `done` line. A target that is
missing or cannot be read ends the listing with an error line and exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.files.digest import digest_tree, end_line
from logship.engines.files.engine import files_connector
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.verify import display_path
from logship.errors import OperationFailed, first_line


def _target_problem(target: Path) -> str | None:
    try:
        if target.is_dir():
            return None
    except OSError as exc:
        return f"[standby].target {target} cannot be read here: {first_line(exc)}"
    if not target.exists():
        return f"[standby].target {target} does not exist at this site"
    return f"[standby].target {target} is not a folder"


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config), this_site=args.this_site)
    connector = files_connector(config, args.connector)
    target = Path(connector.standby.target)
    out = sys.stdout
    problem = _target_problem(target)
    if problem is None:
        count = 0
        try:
            for entry in digest_tree(target, ExcludeRules(connector.exclude)):
                out.write(entry.to_line() + "\n")
                count += 1
        except OSError as exc:
            # A folder below the target this user cannot enter, say; named escaped,
            # as its name may not be valid text.
            where = display_path(os.fsencode(exc.filename)) if exc.filename else str(target)
            problem = f"{args.connector}: cannot list {where}: {exc.strerror or first_line(exc)}"
        else:
            out.write(end_line(count) + "\n")
            return 0
    out.write(end_line(None, problem) + "\n")
    out.flush()
    raise OperationFailed(problem)
