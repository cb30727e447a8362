"""`logship drill CONNECTOR [--backup ID|latest] [--json]`: run at the standby site.

With `--json` stdout carries exactly one JSON object, passed or failed: the primary's
daemon runs this over SSH and reads the result from it. Without it a failure is one
line on stderr, like every other verb.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.postgresql.drill import DrillResult, run_drill
from logship.errors import EXIT_FAILED, OperationFailed
from logship.ui.phase_progress import phase_progress

_PHASES = {
    "extract": "extracting and checking sha256",
    "verify": "pg_verifybackup",
    "configure": "configuring the scratch copy",
    "replay": "replaying the shipped WAL",
    "query": "querying the drilled copy",
    "cleanup": "stopping and removing the scratch copy",
}


@contextmanager
def _stop_signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so the scratch server is still stopped
    and its folder removed (a lost SSH session ends the drill with a SIGHUP)."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _hang_up_when_stdin_closes() -> None:
    """SIGHUP ourselves when stdin reaches EOF.

    sshd sends no SIGHUP to a command run without a terminal when the session
    goes; the daemon keeps the session's stdin open instead, so EOF here means the
    daemon stopped or the link broke, and the scratch server must not outlive it.
    """

    def watch() -> None:
        while sys.stdin.buffer.read1(4096):
            pass
        os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _summary(result: DrillResult, query: str) -> str:
    newest = result.newest_shipped_wal or "none shipped"
    lines = [
        f"drill {result.connector}: backup {result.backup_id} passed",
        f"  restore  {_seconds(result.restore_s):>9}  extract, sha256 and pg_verifybackup",
        f"  replay   {_seconds(result.replay_s):>9}  to {result.replayed_to_wal} "
        f"(newest shipped: {newest})",
        f"  rebuild  {_seconds(result.rebuild_s):>9}  measured time to rebuild a standby",
        f"  query    {query} -> {result.query_result}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config = load_config(config_path(args.config), this_site=args.this_site, role="standby")
    show_progress = not args.json and sys.stdout.isatty()
    if args.stop_when_stdin_closes:
        _hang_up_when_stdin_closes()
    with _stop_signals_unwind(), phase_progress(show_progress, _PHASES) as on_progress:
        result = run_drill(config, args.connector, args.backup, progress_callback=on_progress)
    if args.json:
        print(result.to_json())
        return 0 if result.passed else EXIT_FAILED
    if not result.passed:
        backup = f"backup {result.backup_id}" if result.backup_id else "no backup drilled"
        raise OperationFailed(f"{args.connector}: {backup}: {result.error}")
    print(_summary(result, config.connector(args.connector).drill.query))
    return 0
