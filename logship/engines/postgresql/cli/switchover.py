"""`logship switchover CONNECTOR [--dry-run]`: a planned role swap, at either site."""

from __future__ import annotations

import argparse

from logship import roles
from logship.config.files import config_path
from logship.config.load import load_config
from logship.config.sizes import parse_size
from logship.engines.postgresql.cli.promote import MARKS
from logship.engines.postgresql.promote import Step, Verdict
from logship.engines.postgresql.switchover import (
    DEFAULT_MAX_BEHIND,
    DEFAULT_TIMEOUT_S,
    Switchover,
    SwitchoverOptions,
)
from logship.errors import UsageError

#: as promote marks its steps; a note here is not a next step
_MARKS = {**MARKS, Verdict.INFO: "note"}


def print_step(step: Step) -> None:
    print(f"[{_MARKS[step.verdict]:>7}] {step.name}: {step.detail}", flush=True)


def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    try:
        max_behind = parse_size(args.max_behind) if args.max_behind else DEFAULT_MAX_BEHIND
    except ValueError as exc:
        raise UsageError(f"--max-behind {args.max_behind}: {exc}") from None
    config = roles.settled(load_config(config_path(args.config), this_site=args.this_site))
    options = SwitchoverOptions(
        dry_run=args.dry_run,
        timeout=args.timeout or DEFAULT_TIMEOUT_S,
        max_behind=max_behind,
    )
    switchover = Switchover(config, args.connector, options, print_step)
    title = "dry run: nothing is changed" if options.dry_run else "swapping roles"
    print(
        f"switchover {args.connector}: {switchover.primary} -> {switchover.standby} ({title})",
        flush=True,
    )
    outcome = switchover.run()
    if outcome.dry_run:
        print("dry run: every gate passed; switchover without --dry-run to do it")
    else:
        print(
            f"switched over {args.connector}: {outcome.new_primary} is the primary, "
            f"{outcome.old_primary} its standby; write outage {outcome.outage_s:.1f} s"
        )
    return 0
