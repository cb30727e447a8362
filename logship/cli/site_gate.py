"""`logship site-gate --site NAME`: the forced command of a restricted shipping key.

See logship.site.gate. Refusals are one line on stderr and exit 3.
"""

from __future__ import annotations

import argparse
import os
import sys

from logship import __version__
from logship.config.files import config_path, read_toml
from logship.errors import ConfigError
from logship.site.gate import decide


def run(args: argparse.Namespace) -> int:
    if not args.config:
        # Never $LOGSHIP_CONFIG or ./logship.toml: the client may influence both.
        raise ConfigError("site-gate needs --config (the site's own config) in the forced command")
    config = config_path(args.config)
    sites = read_toml(config).get("sites")
    if not isinstance(sites, dict) or args.site not in sites:
        raise ConfigError(f"{config}: no [sites.{args.site}] for site-gate --site {args.site}")
    argv = decide(os.environ.get("SSH_ORIGINAL_COMMAND"), config, args.site)
    if argv == ["--version"]:
        print(f"logship {__version__}")
        return 0
    from logship.cli.main import main

    sys.stdout.flush()
    return main(["--config", str(config), *argv])
