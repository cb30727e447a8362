"""`logship promote CONNECTOR`: checked, manual failover at the standby site."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from logship.catalog.opening import scrub
from logship.config.files import config_path
from logship.config.load import load_config
from logship.config.model import Config
from logship.consistency import files_connectors_for
from logship.engines.postgresql.base_backup import postgres_connector
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.promote import PromoteOptions, Promotion, Step, Verdict
from logship.errors import UsageError, first_line

MARKS = {
    Verdict.OK: "ok",
    Verdict.REFUSED: "REFUSED",
    Verdict.FAILED: "FAILED",
    Verdict.FORCED: "FORCED",
    Verdict.WOULD: "would",
    Verdict.INFO: "next",
}


def _print(step: Step) -> None:
    # Flushed per step: at 3 a.m. the operator watches the drain as it happens.
    print(f"[{MARKS[step.verdict]:>7}] {step.name}: {step.detail}", flush=True)


def _catalog_recorder(config: Config) -> Callable[[dict[str, Any]], str]:
    """Record the promote in the catalog when this site can reach it.

    The default SQLite catalog lives at the primary site: after a disaster it is
    usually gone, and a missing file is not created here. A shared PostgreSQL
    catalog may well still answer.
    """

    def record(entry: dict[str, Any]) -> str:
        from logship.catalog.store import Catalog

        url = config.catalog_url
        database = make_url(url).database or ""
        if url.startswith("sqlite") and not Path(database).is_file():
            return "not reachable from this site (it lives at the primary site)"
        try:
            catalog = Catalog(url)
            try:
                loss = entry["loss"].get("bound_s")
                message = (
                    f"promoted to timeline {entry['new_timeline']}: RTO {entry['rto_s']} s, "
                    f"at most {loss} s of commits lost"
                )
                catalog.add_event(
                    entry["connector"], entry["at"], "promote", message, json.dumps(entry)
                )
            finally:
                catalog.close()
        except Exception as exc:  # the promote is done; the catalog is only a copy
            return f"not written ({scrub(first_line(exc), url)})"
        return "event recorded"

    return record


def run(args: argparse.Namespace) -> int:
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be a positive number of seconds")
    config = load_config(config_path(args.config), this_site=args.this_site, role="standby")
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
    outcome = Promotion(
        connector,
        Path(site.root),
        options,
        _print,
        record_event=_catalog_recorder(config),
        files=files_connectors_for(config, connector.name),
    ).run()
    if outcome.dry_run:
        print("dry run: every check passed; promote without --dry-run to do it", file=sys.stdout)
        return 0
    print(f"promoted {connector.name}: the standby is the primary now", flush=True)
    if connector.sides is not None and outcome.new_timeline is not None:
        _fence_old_primary(config, connector, outcome.new_timeline)
    return 0


def _fence_old_primary(config: Config, connector: PostgresConnector, timeline: int) -> None:
    """The old primary's site, when it answers over SSH: its stopped database is
    fenced there. Never fails the promote: it is done."""
    from logship.engines.postgresql.switchover_remote import StepRunner
    from logship.errors import LogshipError

    old = connector.primary_side
    assert old is not None
    try:
        answer = StepRunner(config, connector.name).call(old, "fence", wait_s=30, timeline=timeline)
        fenced = answer.flag("fenced")
        why = answer.text("why")
    except LogshipError as exc:
        fenced, why = False, f"not reached ({first_line(exc)})"
    if fenced:
        _print(
            Step(
                "fence old primary",
                Verdict.OK,
                f"{old}: fenced ({why}); started by hand "
                f"it stays read-only until `logship reinstate {connector.name}` there",
            )
        )
    else:
        _print(
            Step(
                "fence old primary",
                Verdict.INFO,
                f"{old}: not fenced: {why}. Keep it "
                f"down; `logship run` there fences it when it starts, then run "
                f"`logship reinstate {connector.name}` there",
            )
        )
