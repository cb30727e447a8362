"""`logship run`: the daemon; SIGTERM or SIGINT stops it cleanly with exit 0.

With two-sided connectors the same command runs at both sites: each site's
daemon ships the connectors whose primary is its own database, and watches the
databases; when a role changes (a promote, a switchover) it restarts its work in
the new direction, with no config edit.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import logging
import signal
import threading
from types import FrameType

from logship import roles
from logship.config.files import config_path
from logship.config.model import Config
from logship.daemon import Daemon
from logship.logs import event, setup_logging
from logship.ship.ssh_trust import refuse_unprotected_key

log = logging.getLogger("logship.daemon")

#: how often the databases are asked who is the primary (at most; see _watch_interval)
ROLE_WATCH_MAX_S = 5.0


class _RoleWatch(threading.Thread):
    """Asks the databases who is the primary; a change stops the daemon, which
    then starts again in the new direction."""

    def __init__(self, config: Config, stop_daemon: threading.Event, daemon: Daemon) -> None:
        super().__init__(name="role-watch", daemon=True)
        self._config = config
        self._done = stop_daemon
        self._daemon = daemon
        self.moved: dict[str, str] = {}
        self._interval = min(ROLE_WATCH_MAX_S, max(1.0, config.logship.lag_sample_interval))

    def run(self) -> None:
        while not self._done.wait(self._interval):
            moved = roles.changed_since(self._config)
            if moved:
                self.moved = moved
                self._daemon.stop()
                return


def _built(args: argparse.Namespace) -> Config:
    from logship.config.load import load_config

    config = roles.settled(load_config(config_path(args.config), this_site=args.this_site))
    # Refused before starting, not met later as a reconnect loop: as OpenSSH does,
    # a private key others can read is not used (SafetyRefusal, exit 3).
    for site in config.sites.values():
        refuse_unprotected_key(site)
    return config


def run(args: argparse.Namespace) -> int:
    setup_logging(debug=args.debug)
    stopping = threading.Event()
    current: list[Daemon] = []

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for daemon in current:
            daemon.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # A daemon that seems stuck can be asked where each thread is: kill -USR1 PID.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    while not stopping.is_set():
        # What is made from here to the freeze (the config, the daemon's parts, the
        # catalog's compiled statements) lives as long as the daemon: no collection
        # until then (see logship.cli.main), and none of it in the collector's full
        # passes afterwards, which otherwise walk it all again while a first sync
        # allocates thousands of rows (about 70 ms each on a 2-core machine).
        gc.disable()
        try:
            config = _built(args)
            daemon = Daemon(roles.shipping_here(config))
            gc.freeze()
        finally:
            gc.enable()
        current[:] = [daemon]
        if stopping.is_set():
            break
        for name, what in roles.guard_standby_sides(config).items():
            event(log, logging.WARNING, "old primary fenced", connector=name, detail=what)
        watch_done = threading.Event()
        watch = None
        if any(getattr(c, "sides", None) for c in config.connectors.values()):
            watch = _RoleWatch(config, watch_done, daemon)
            watch.start()
        try:
            daemon.run()
        finally:
            watch_done.set()
        if watch is None or not watch.moved:
            break
        watch.join()
        event(log, logging.WARNING, "roles changed", primary=watch.moved)
    return 0
