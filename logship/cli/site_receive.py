"""`logship site-receive CONNECTOR`: the restricted primary's writes, at the site.

Speaks logship.site.gate_protocol on stdin/stdout, confined to
`<site root>/<connector>/` from this site's own config (see
logship.site.receive_server).
"""

from __future__ import annotations

import argparse
import sys

from logship.cli.pipe_input import frames_in
from logship.config.files import config_path, read_for_hot_path
from logship.errors import ConfigError
from logship.site.receive_server import run as serve


def run(args: argparse.Namespace) -> int:
    config = config_path(args.config)
    found = read_for_hot_path(config, args.connector, args.this_site)
    if found.site_root is None or not found.site_root.is_absolute():
        raise ConfigError(f"{config}: connector {args.connector!r} has no site with a root")
    with frames_in(sys.stdin.fileno()) as frames:
        return serve(str(found.site_root), args.connector, frames, sys.stdout.buffer)
