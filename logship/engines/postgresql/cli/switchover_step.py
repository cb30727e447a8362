"""`logship switchover-step CONNECTOR STEP`: one step at this site, one JSON answer.

`switchover` runs it at the other site over SSH; run by hand it does exactly what
that step of a switchover does here.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from logship.config.files import config_path
from logship.config.load import load_config
from logship.engines.postgresql.switchover_remote import LOCAL
from logship.errors import UsageError

#: step -> the arguments it takes (from the options of the same name)
ARGUMENTS = {
    "facts": (),
    "reach": ("target",),
    "stop": (),
    "restart": (),
    "ship-final": ("since_lsn", "dry_run"),
    "unship-final": ("segment",),
    "replayed": ("lsn", "timeout"),
    "promote": ("timeout",),
    "follow": (),
    "fence": ("timeline",),
}


def run(args: argparse.Namespace) -> int:
    if args.step not in ARGUMENTS:
        raise UsageError(f"unknown step {args.step!r} (known: {', '.join(ARGUMENTS)})")
    arguments: dict[str, Any] = {}
    for name in ARGUMENTS[args.step]:
        value = getattr(args, name)
        if value is None:
            raise UsageError(f"step {args.step} needs --{name.replace('_', '-')}")
        arguments[name] = value
    config = load_config(config_path(args.config), this_site=args.this_site)
    answer = LOCAL[args.step](config, args.connector, **arguments)
    print(json.dumps(answer, sort_keys=True))
    return 0
