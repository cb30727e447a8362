"""`logship run`: the daemon; SIGTERM or SIGINT stops it cleanly with exit 0."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import signal
from types import FrameType

from logship.config.files import config_path
from logship.config.load import load_config
from logship.daemon import Daemon
from logship.logs import setup_logging
from logship.ship.ssh_trust import refuse_unprotected_key


def run(args: argparse.Namespace) -> int:
    # What is made from here to the freeze (the config, the daemon's parts, the
    # catalog's compiled statements) lives as long as the daemon: no collection
    # until then (see logship.cli.main), and none of it in the collector's full
    # passes afterwards, which otherwise walk it all again while a first sync
    # allocates thousands of rows (about 70 ms each on a 2-core machine).
    gc.disable()
    try:
        config = load_config(config_path(args.config))
        # Refused before starting, not met later as a reconnect loop: as OpenSSH does,
        # a private key others can read is not used (SafetyRefusal, exit 3).
        for site in config.sites.values():
            refuse_unprotected_key(site)
        setup_logging(debug=args.debug)
        daemon = Daemon(config)
        gc.freeze()
    finally:
        gc.enable()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # A daemon that seems stuck can be asked where each thread is: kill -USR1 PID.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    daemon.run()
    return 0
