"""`logship promote CONNECTOR`: checked, manual failover at the standby site."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from logship.basebackup import postgres_connector
from logship.config.files import config_path
from logship.config.load import load_config
from logship.errors import UsageError
from logship.replay.promote import PromoteOptions, Promotion, Step, Verdict

_MARKS = {
    Verdict.OK: "ok",
    Verdict.REFUSED: "REFUSED",
    Verdict.FAILED: "FAILED",
    Verdict.FORCED: "FORCED",
    Verdict.WOULD: "would",
    Verdict.INFO: "next",
}


def _print(step: Step) -> None:
    # Flushed per step: at 3 a.m. the operator watches the drain as it happens.
    print(f"[{_MARKS[step.verdict]:>7}] {step.name}: {step.detail}", flush=True)


def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    config = load_config(config_path(args.config))
    connector = postgres_connector(config, args.connector)
    site = config.site_of(connector)
    options = PromoteOptions(
        dry_run=args.dry_run,
        force=args.force,
        accept_data_loss=args.accept_data_loss,
        timeout=args.timeout if args.timeout is not None else PromoteOptions.timeout,
    )
    title = "dry run: nothing is changed" if options.dry_run else "promoting"
    print(f"promote {connector.name} ({title})", flush=True)
    outcome = Promotion(connector, Path(site.root), options, _print).run()
    if outcome.dry_run:
        print("dry run: every check passed; promote without --dry-run to do it", file=sys.stdout)
    else:
        print(f"promoted {connector.name}: the standby is the primary now", flush=True)
    return 0
