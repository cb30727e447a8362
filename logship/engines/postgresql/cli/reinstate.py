"""`logship reinstate CONNECTOR [--dry-run]`: at the old primary's site, after a failover."""

from __future__ import annotations

import argparse

from logship import roles
from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.postgresql.cli.switchover import print_step
from logship.engines.postgresql.reinstate import Reinstatement, ReinstateOptions


def run(args: argparse.Namespace) -> int:
    config = roles.settled(load_config(config_path(args.config), this_site=args.this_site))
    options = ReinstateOptions(dry_run=args.dry_run)
    reinstatement = Reinstatement(config, args.connector, options, print_step)
    title = "dry run: nothing is changed" if options.dry_run else "reinstating"
    print(
        f"reinstate {args.connector}: {reinstatement.here} becomes a standby of "
        f"{reinstatement.new} ({title})",
        flush=True,
    )
    outcome = reinstatement.run()
    if outcome.dry_run:
        print("dry run: reinstate without --dry-run to do it")
    elif outcome.method != "none":
        print(
            f"reinstated {args.connector} by {outcome.method} in {outcome.seconds:.1f} s: "
            f"{reinstatement.here} is a standby of {reinstatement.new}"
        )
    return 0
