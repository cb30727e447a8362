"""What `logship status --json` says about one connector, every INTERVAL seconds.

Usage: python bench/status_sampler.py CONFIG CONNECTOR INTERVAL

Not a benchmark: bench/streaming.py starts it as the user that runs logship (the
catalog's owner, so nothing it opens is left owned by root). Each sample is the
connector's entry of `status --json`, computed by the same function the CLI
calls, with `sampled_at` added, one JSON line on stdout. A new CLI process per
sample would cost more CPU than the sampling interval on a small machine and
compete with the load being measured. It runs until its stdin closes.
"""

from __future__ import annotations

import json
import select
import sys
import time
from pathlib import Path

from logship import jsonout
from logship.cli.status import open_catalog
from logship.config.load import load_config
from logship.status.monitor import collect_statuses


def main(argv: list[str]) -> int:
    config_file, connector, interval = Path(argv[0]), argv[1], float(argv[2])
    config = load_config(config_file)
    catalog = None
    next_at = time.monotonic()
    try:
        while True:
            if catalog is None:
                catalog = open_catalog(config)  # None until the daemon has made it
            now = time.time()
            (status,) = collect_statuses(config, catalog, [connector], now)
            entry = json.loads(jsonout.dumps(status.to_json()))
            entry["sampled_at"] = now
            sys.stdout.write(json.dumps(entry) + "\n")
            sys.stdout.flush()
            next_at += interval
            wait = max(0.0, next_at - time.monotonic())
            # The interval timer and the signal to stop in one: stdin closing.
            readable, _, _ = select.select([sys.stdin], [], [], wait)
            if readable and not sys.stdin.read(1):
                return 0
    finally:
        if catalog is not None:
            catalog.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
