"""`logship standby restore|status|stream-check CONNECTOR`: run at the standby site."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from logship.config.files import config_path
from logship.config.load import load_config
from logship.config.model import Config
from logship.engines.postgresql.base_backup import postgres_connector
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.standby_restore import restore_standby
from logship.engines.postgresql.standby_status import read_connector_standby_facts
from logship.errors import EXIT_FAILED, UsageError, first_line
from logship.manifest import SiteLayout
from logship.site_temps import sweep_stale_temps
from logship.ui.phase_progress import phase_progress

_PHASES = {
    "extract": "extracting and checking sha256",
    "verify": "pg_verifybackup",
    "configure": "configuring recovery",
    "start": "starting the standby",
}


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config), this_site=args.this_site, role="standby")
    if args.standby_action == "status":
        return _status(config, args)
    if args.standby_action == "stream-check":
        return _stream_check(config, args)
    if args.standby_action == "follow":
        from logship.engines.postgresql.switchover_steps import follow

        done = follow(config, args.connector)
        print(f"standby {args.connector}: {done['site']} follows {done['following']} now")
        return 0
    with phase_progress(sys.stdout.isatty(), _PHASES) as on_progress:
        restored = restore_standby(config, args.connector, args.backup, on_progress)
    print(
        f"standby {args.connector}: restored backup {restored.record.backup_id} into "
        f"{restored.data_dir} and started it on port {restored.port} (replaying through "
        f"restore-wal; server log {restored.log_file})"
    )
    return 0


def _keep_streaming_current(connector: PostgresConnector) -> None:
    import psycopg

    from logship.engines.postgresql.streaming.settings import keep_standby_current

    try:
        keep_standby_current(connector)
    except psycopg.OperationalError:
        pass  # the standby is down: the facts below say so
    except psycopg.Error as exc:
        print(f"streaming settings not updated: {first_line(exc)}", file=sys.stderr)


def _status(config: Config, args: argparse.Namespace) -> int:
    connector = postgres_connector(config, args.connector)
    site = config.site_of(connector)
    # The daemon asks this every few seconds: the site's own chance to sweep
    # upload temps left behind, which a restricted primary may not remove.
    sweep_stale_temps(SiteLayout.for_connector(site.root, connector.name), time.time())
    # And to bring the standby's streaming settings in line with the config, so
    # that turning streaming on or off needs no restore.
    _keep_streaming_current(connector)
    facts = read_connector_standby_facts(connector, site.root)
    if args.json:
        print(facts.to_json())
        return 0
    for key, value in asdict(facts).items():
        print(f"{key:18} {value}")
    return 0 if facts.reachable else 1


def _stream_check(config: Config, args: argparse.Namespace) -> int:
    """One JSON line (what `check` reads): exit 0 when the role logged in."""
    from logship.engines.postgresql.streaming.probe import probe_through_tunnel

    connector = postgres_connector(config, args.connector)
    if not connector.streaming.enabled:
        raise UsageError(f"connector {connector.name}: [streaming] is not enabled here")
    answer = probe_through_tunnel(connector)
    print(json.dumps(answer))
    return EXIT_FAILED if "error" in answer else 0
