"""PostgreSQL's CLI verbs, as `logship.cli.main` adds them to its parser.

Read at every call of `logship`, archive-wal's and restore-wal's once per WAL
segment: the standard library's argparse only. A verb's own module (under
`logship.engines.postgresql.cli`) is imported only when that verb runs.
"""

from __future__ import annotations

import argparse


def _connector(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")


def _archive_wal(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument("path", help="%%p: the WAL file PostgreSQL hands over")


def _restore_wal(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument("walname", help="%%f: the file PostgreSQL asks for")
    p.add_argument("dest", help="%%p: where PostgreSQL wants it")
    p.add_argument(
        "--no-mark",
        action="store_true",
        help="leave restored.json (the standby's progress) alone: for scratch copies",
    )


def _standby(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="standby_action", metavar="ACTION", parser_class=type(p))
    actions.required = True
    r = actions.add_parser("restore", help="restore a shipped base backup and start replay")
    r.add_argument("connector")
    r.add_argument("--backup", help="backup id or 'latest' (default: latest)")
    st = actions.add_parser("status", help="the standby's replay facts, read at its site")
    st.add_argument("connector")
    st.add_argument("--json", action="store_true", help="one JSON object (what the daemon reads)")
    sc = actions.add_parser(
        "stream-check",
        help="log in through the streaming tunnel as the standby would (what check runs)",
    )
    sc.add_argument("connector")
    fo = actions.add_parser(
        "follow",
        help="start this site's cleanly stopped database as a standby of the other side",
    )
    fo.add_argument("connector")


def _switchover(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument("--dry-run", action="store_true", help="evaluate every gate, change nothing")
    p.add_argument(
        "--timeout", type=float, help="seconds for the standby's replay and pg_promote (120)"
    )
    p.add_argument(
        "--max-behind",
        metavar="SIZE",
        help="refuse when the standby is more than this behind (default 64MiB)",
    )


def _reinstate(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument(
        "--dry-run", action="store_true", help="report the divergence and the plan, change nothing"
    )


def _switchover_step(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument("step", help="facts, reach, stop, restart, ship-final, ...")
    p.add_argument("--target", help="reach: the site to reach")
    p.add_argument("--since-lsn", help="ship-final: from the standby's replay position")
    p.add_argument("--lsn", help="replayed: the position to replay past")
    p.add_argument("--segment", help="unship-final: the segment to take back")
    p.add_argument("--timeout", type=float, help="replayed, promote: seconds")
    p.add_argument("--dry-run", action="store_true", help="ship-final: plan only")
    p.add_argument("--timeline", type=int, help="fence: the new primary's timeline")


def _drill(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument("--backup", help="backup id or 'latest' (default: latest)")
    p.add_argument("--json", action="store_true", help="the result as one JSON object")
    p.add_argument(
        "--stop-when-stdin-closes",
        action="store_true",
        help="abort (and clean up) when stdin reaches EOF: how the daemon runs it over SSH",
    )


def _retention(p: argparse.ArgumentParser) -> None:
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


def _mark(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector", help="a database connector")
    p.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for completion (default 30)"
    )
    p.add_argument("--json", action="store_true", help="the point as one JSON object")


def _promote(p: argparse.ArgumentParser) -> None:
    p.add_argument("connector")
    p.add_argument("--dry-run", action="store_true", help="evaluate every check, change nothing")
    p.add_argument("--force", action="store_true", help="go on though the primary answers")
    p.add_argument(
        "--accept-data-loss", action="store_true", help="go on though the loss exceeds the RPO"
    )
    p.add_argument("--timeout", type=float, help="seconds for the final drain and pg_promote")


_CLI = "logship.engines.postgresql.cli"

# verb -> (the module whose run(args) runs it, one-line help, adds its arguments)
VERBS = {
    "archive-wal": (
        f"{_CLI}.archive_wal",
        "PostgreSQL archive_command: confirms a segment already shipped, else a durable spool copy",
        _archive_wal,
    ),
    "restore-wal": (
        f"{_CLI}.restore_wal",
        "PostgreSQL restore_command: verified WAL from the manifest",
        _restore_wal,
    ),
    "base-backup": (
        f"{_CLI}.base_backup",
        "take a base backup and stream it to the standby site",
        _connector,
    ),
    "standby": (
        f"{_CLI}.standby",
        "standby-site actions (restore, status, stream-check, follow)",
        _standby,
    ),
    "drill": (
        f"{_CLI}.drill",
        "prove a base backup restores: scratch restore, replay, query",
        _drill,
    ),
    "retention": (
        f"{_CLI}.retention",
        "delete old base backups and the WAL only they needed",
        _retention,
    ),
    "mark": (
        f"{_CLI}.mark",
        "take a consistency point: the primary's LSN paired with the files' state",
        _mark,
    ),
    "promote": (f"{_CLI}.promote", "checked, manual failover at the standby site", _promote),
    "switchover": (
        f"{_CLI}.switchover",
        "planned role swap with zero data loss, run at either site ([sides.*] connectors)",
        _switchover,
    ),
    "reinstate": (
        f"{_CLI}.reinstate",
        "after a failover, make the old primary a standby of the new one (at its site)",
        _reinstate,
    ),
    "switchover-step": (
        f"{_CLI}.switchover_step",
        "one step of a switchover at this site, answered in JSON (switchover runs it over SSH)",
        _switchover_step,
    ),
}
