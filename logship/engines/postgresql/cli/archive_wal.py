"""`logship archive-wal CONNECTOR PATH`: PostgreSQL's archive_command."""

from __future__ import annotations

import argparse
from pathlib import Path

from logship.config.files import config_path, read_for_hot_path
from logship.engines.postgresql.archive_wal import archive_wal


def run(args: argparse.Namespace) -> int:
    cfg = read_for_hot_path(config_path(args.config), args.connector, args.this_site)
    archive_wal(cfg.spool_dir, Path(args.path))
    return 0
