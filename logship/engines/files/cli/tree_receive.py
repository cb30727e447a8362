"""`logship tree-receive CONNECTOR`: run at the standby site by the files connector.

Reads batches of small files on stdin and lands them under `[standby].target`
(see logship.engines.files.receive and logship.engines.files.stream). The files
connector starts one per connection over SSH, with only the connector's name as
argument, and falls back to SFTP alone when it cannot run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from logship.cli.pipe_input import frames_in
from logship.config.files import config_path
from logship.engines.files.receive import Receiver
from logship.engines.files.site_target import read_files_target
from logship.engines.files.stream import reply_line


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    try:
        target = Path(read_files_target(config_path(args.config), args.connector))
    except Exception as exc:
        # The files connector reads this line and ships over SFTP alone instead.
        out.write(reply_line({"error": str(exc)}))
        out.flush()
        raise
    if not target.is_dir():
        message = f"[standby].target {target} is not a folder at this site"
        out.write(reply_line({"error": message}))
        out.flush()
        return 1
    with frames_in(sys.stdin.fileno()) as frames:
        Receiver(target).serve(frames, out, sweep=not args.no_sweep)
    return 0
