"""`logship mark CONNECTOR`: take a consistency point now, at the primary site.

Reads the primary's current LSN, records a point for every files connector at
the connector's site, and waits (`--wait`, default 30 s) until the daemon's
files connectors have completed it: the source folder scanned, every change it saw durable at the
site, the pairing written there. Exit 0 when complete; 1 when it is recorded
but not complete yet (the daemon completes it when it can).
"""

from __future__ import annotations

import argparse
import json
import time

from logship import consistency
from logship.catalog.models import ConsistencyPoint
from logship.catalog.opening import open_catalog
from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.postgresql.base_backup import postgres_connector
from logship.errors import EXIT_FAILED, OperationFailed, UsageError, first_line
from logship.status.figures import iso_utc as iso

POLL_S = 0.2

PRIMARY_POSITION = """
select pg_is_in_recovery(), pg_current_wal_lsn()::text,
       (select timeline_id from pg_control_checkpoint())
"""


def primary_position(dsn: str, connector: str) -> tuple[str, int]:
    """The primary's current WAL insert position and timeline."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            row = conn.execute(PRIMARY_POSITION).fetchone()
    except psycopg.Error as exc:
        raise OperationFailed(
            f"connector {connector}: the primary does not answer ({first_line(exc)}); "
            "a consistency point needs its current LSN"
        ) from None
    assert row is not None
    in_recovery, lsn, timeline = row
    if in_recovery:
        raise OperationFailed(
            f"connector {connector}: [primary].dsn reaches a server in recovery, not the primary"
        )
    return str(lsn), int(timeline)


def _part_json(part: ConsistencyPoint) -> dict[str, object]:
    return {
        "connector": part.files,
        "scanned_at": iso(part.scanned_at),
        "generation": part.generation,
        "complete_at": iso(part.complete_at),
    }


def run(args: argparse.Namespace) -> int:
    if args.wait < 0:
        raise UsageError(f"--wait {args.wait:g}: must be zero or a positive number of seconds")
    config = load_config(config_path(args.config), this_site=args.this_site, role="primary")
    connector = postgres_connector(config, args.connector)
    files = consistency.files_connectors_for(config, connector.name)
    if not files:
        raise UsageError(
            f"connector {connector.name}: no files connector at site {connector.site} to pair "
            "its LSN with; a consistency point covers the files connectors of the same site"
        )
    lsn, timeline = primary_position(connector.primary.dsn, connector.name)
    catalog = open_catalog(config)
    try:
        taken_at = time.time()
        point_id = consistency.record_point(
            catalog,
            database=connector.name,
            files=files,
            lsn=lsn,
            timeline=timeline,
            taken_at=taken_at,
            reason="on demand",
        )
        if not args.json:
            print(
                f"consistency point {point_id}: {connector.name} at LSN {lsn} "
                f"(timeline {timeline}); waiting for {', '.join(files)}",
                flush=True,
            )
        deadline = time.monotonic() + args.wait
        while True:
            parts = consistency.parts_of(catalog, point_id)
            complete = all(part.complete_at is not None for part in parts)
            if complete or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
    finally:
        catalog.close()
    if args.json:
        print(
            json.dumps(
                {
                    "point": point_id,
                    "database": connector.name,
                    "lsn": lsn,
                    "timeline": timeline,
                    "taken_at": iso(taken_at),
                    "complete": complete,
                    "files": [_part_json(part) for part in parts],
                }
            )
        )
    else:
        for part in parts:
            if part.complete_at is not None:
                print(
                    f"  {part.files}: generation {part.generation}, durable at the site "
                    f"{part.complete_at - taken_at:.1f} s after the LSN was read"
                )
            else:
                print(f"  {part.files}: not complete yet")
    if complete:
        return 0
    if not args.json:
        print(
            f"point {point_id} is recorded but not complete after {args.wait:g} s: the daemon "
            "(`logship run`) completes it once the changes it covers are durable at the site"
        )
    return EXIT_FAILED
