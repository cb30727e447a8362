"""`logship restore-wal CONNECTOR WALNAME DEST`: PostgreSQL's restore_command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from logship.config.files import config_path, read_for_hot_path
from logship.engines.postgresql.restore_wal import EXIT_ABORT, NotArrived, restore_wal
from logship.errors import ConfigError, LogshipError


def run(args: argparse.Namespace) -> int:
    try:
        cfg = read_for_hot_path(config_path(args.config), args.connector, args.this_site)
        if cfg.site_root is None:
            raise ConfigError(f"connector {args.connector}: its site has no 'root' configured")
        restore_wal(
            cfg.site_root,
            args.connector,
            args.walname,
            Path(args.dest),
            mark=not args.no_mark,
        )
    except NotArrived:
        return NotArrived.exit_code  # the normal answer while waiting: not an error
    except LogshipError as exc:
        print(f"logship restore-wal: {exc}", file=sys.stderr)
        # Anything but "not arrived" or a refused file must not read as "not found".
        return exc.exit_code if exc.exit_code == 1 else EXIT_ABORT
    except Exception as exc:
        if args.debug:
            raise
        print(f"logship restore-wal: {args.walname}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ABORT
    return 0
