"""`logship` entry point: parse arguments, run one verb, map errors to exit codes.

Kept free of heavy imports: `archive-wal` and `restore-wal` go through here once
per WAL segment.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from logship import __version__
from logship.errors import EXIT_FAILED, EXIT_USAGE, LogshipError

# verb -> (module under logship.cli, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "check": ("check", "validate config, reach SSH (host key), dirs and archive settings"),
    "run": ("run", "the daemon at the primary site: watch, ship, schedule, measure"),
    "archive-wal": ("archive_wal", "PostgreSQL archive_command: durable copy into the spool"),
    "restore-wal": ("restore_wal", "PostgreSQL restore_command: verified WAL from the manifest"),
    "base-backup": ("base_backup", "take a base backup and stream it to the standby site"),
    "standby": ("standby", "standby-site actions (restore, status)"),
    "drill": ("drill", "prove a base backup restores: scratch restore, replay, query"),
    "retention": ("retention", "delete old base backups and the WAL only they needed"),
    "verify": ("verify", "compare a files connector's tree with the site's copy, report drift"),
    "mark": ("mark", "take a consistency point: the primary's LSN paired with the files' state"),
    "tree-digest": ("tree_digest", "list the site's copy of a files tree with sha256 (for verify)"),
    "tree-receive": (
        "tree_receive",
        "land batches of a files mirror at the site (the daemon runs it)",
    ),
    "site-gate": (
        "site_gate",
        "forced command of a restricted shipping key: allow only logship's site commands",
    ),
    "site-receive": (
        "site_receive",
        "take new files from a restricted primary, never replacing one (site-gate runs it)",
    ),
    "status": ("status", "lag and RPO per connector"),
    "dashboard": ("dashboard", "live terminal view of lag and RPO"),
    "promote": ("promote", "checked, manual failover at the standby site"),
    "demo": ("demo", "self-contained sandbox: ship, replay, lag, then a checked promote"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own exit code is 2 as well; keep the message to one line.
        self.exit(EXIT_USAGE, f"logship: {message} (see logship --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="logship", description="Warm disaster-recovery standby over nothing but SSH."
    )
    parser.add_argument(
        "--config", help="path to logship.toml (default: $LOGSHIP_CONFIG or ./logship.toml)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    # `check` at the primary runs the site's command with --version to see that it is
    # logship, and which one.
    parser.add_argument("--version", action="version", version=f"logship {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("check", help=VERBS["check"][1])
    p.add_argument("connector", nargs="?", help="only this connector")

    sub.add_parser("run", help=VERBS["run"][1])

    p = sub.add_parser("archive-wal", help=VERBS["archive-wal"][1])
    p.add_argument("connector")
    p.add_argument("path", help="%%p: the WAL file PostgreSQL hands over")

    p = sub.add_parser("restore-wal", help=VERBS["restore-wal"][1])
    p.add_argument("connector")
    p.add_argument("walname", help="%%f: the file PostgreSQL asks for")
    p.add_argument("dest", help="%%p: where PostgreSQL wants it")
    p.add_argument(
        "--no-mark",
        action="store_true",
        help="leave restored.json (the standby's progress) alone: for scratch copies",
    )

    p = sub.add_parser("base-backup", help=VERBS["base-backup"][1])
    p.add_argument("connector")

    p = sub.add_parser("standby", help=VERBS["standby"][1])
    standby_sub = p.add_subparsers(dest="standby_action", metavar="ACTION", parser_class=_Parser)
    standby_sub.required = True
    r = standby_sub.add_parser("restore", help="restore a shipped base backup and start replay")
    r.add_argument("connector")
    r.add_argument("--backup", help="backup id or 'latest' (default: latest)")
    st = standby_sub.add_parser("status", help="the standby's replay facts, read at its site")
    st.add_argument("connector")
    st.add_argument("--json", action="store_true", help="one JSON object (what the daemon reads)")

    p = sub.add_parser("drill", help=VERBS["drill"][1])
    p.add_argument("connector")
    p.add_argument("--backup", help="backup id or 'latest' (default: latest)")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    p.add_argument(
        "--stop-when-stdin-closes",
        action="store_true",
        help="abort (and clean up) when stdin reaches EOF: how the daemon runs it over SSH",
    )

    p = sub.add_parser("retention", help=VERBS["retention"][1])
    p.add_argument("connector", nargs="?", help="(with --at-site: default every one)")
    p.add_argument(
        "--at-site",
        action="store_true",
        help="run at the standby site on its own folders (for a restricted site)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted, delete nothing"
    )
    p.add_argument("--json", action="store_true", help="the result as one JSON object")

    p = sub.add_parser("verify", help=VERBS["verify"][1])
    p.add_argument("connector")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")

    p = sub.add_parser("mark", help=VERBS["mark"][1])
    p.add_argument("connector", help="a database connector")
    p.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for completion (default 30)"
    )
    p.add_argument("--json", action="store_true", help="the point as one JSON object")

    p = sub.add_parser("tree-digest", help=VERBS["tree-digest"][1])
    p.add_argument("connector")

    p = sub.add_parser("tree-receive", help=VERBS["tree-receive"][1])
    p.add_argument("connector")
    p.add_argument(
        "--no-sweep",
        action="store_true",
        help="leave stale temps alone (another receiver of the connection sweeps them)",
    )

    p = sub.add_parser("site-gate", help=VERBS["site-gate"][1])
    p.add_argument("--site", required=True, help="the [sites.NAME] this key ships to")

    p = sub.add_parser("site-receive", help=VERBS["site-receive"][1])
    p.add_argument("connector")

    p = sub.add_parser("status", help=VERBS["status"][1])
    p.add_argument("connector", nargs="?")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.add_argument("--since", metavar="DURATION", help="worst exposure, breaches over DURATION")

    p = sub.add_parser("dashboard", help=VERBS["dashboard"][1])
    p.add_argument("--interval", type=float, default=1.0, help="refresh every N seconds")

    p = sub.add_parser("promote", help=VERBS["promote"][1])
    p.add_argument("connector")
    p.add_argument("--dry-run", action="store_true", help="evaluate every check, change nothing")
    p.add_argument("--force", action="store_true", help="go on though the primary answers")
    p.add_argument(
        "--accept-data-loss", action="store_true", help="go on though the loss exceeds the RPO"
    )
    p.add_argument("--timeout", type=float, help="seconds for the final drain and pg_promote")

    p = sub.add_parser("demo", help=VERBS["demo"][1])
    p.add_argument("--dir", default="demo", help="sandbox folder (default: ./demo)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the write load")
    return parser


#: verbs whose files are meant for other OS users: the demo's sandbox hands its
#: folders to the postgres user and sets their modes itself
_SHARED_FILE_VERBS = frozenset({"demo"})
#: logship's own files (state_dir, spool, catalog, locks) are for its user alone
PRIVATE_UMASK = 0o077


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb not in _SHARED_FILE_VERBS:
        # Before anything is created: a state_dir first made by archive-wal, or a
        # catalog first made by base-backup, must not come out 0755 / 0644. Files
        # meant for others (a mirror's, a restored data dir's) get explicit modes.
        os.umask(PRIVATE_UMASK)
    # Importing a verb's modules (SQLAlchemy, pydantic, paramiko for most) makes
    # objects that live as long as the process; the cycle collector's passes
    # over them found nothing and cost a quarter of the import time (about 0.1 s).
    gc.disable()
    try:
        module = importlib.import_module(f"logship.cli.{VERBS[args.verb][0]}")
    finally:
        gc.enable()
    try:
        return int(module.run(args) or 0)
    except LogshipError as exc:
        if args.debug:
            raise
        print(f"logship {args.verb}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an unexpected failure is still one line without --debug
        if args.debug:
            raise
        print(
            f"logship {args.verb}: unexpected error: {type(exc).__name__}: {exc} "
            "(run again with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED


def run() -> NoReturn:
    """The `logship` command: `main`, then an exit that skips the interpreter's teardown.

    Tearing down SQLAlchemy, pydantic and paramiko costs about 0.15 s on every call
    (measured: 0.50 s against 0.35 s for the same imports), which scripts polling
    `status --json` and a short `base-backup` pay each time. Every verb has closed
    what it opened by the time `main` returns, and logship registers no exit
    handlers, so only the output streams and logging need flushing here.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    # Only verbs that log have imported logging; archive-wal, once per WAL segment,
    # should not pay for importing it just to shut it down.
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    os._exit(code)
