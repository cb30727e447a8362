"""Which of the configured sites this process runs at.

Only connectors written with `[sides.*]` need it: the same files are at both
sites, and each site must know which side is its own. Stdlib only (the hot
path's verbs read it too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

THIS_SITE_ENV = "LOGSHIP_SITE"


def _host_names() -> set[str]:
    import socket

    # Not getfqdn(): it asks DNS, which may hang on a host cut off from it.
    name = socket.gethostname().lower()
    return {name, name.split(".", 1)[0]} - {""}


def this_site(hosts: Mapping[str, str], explicit: str | None) -> str | None:
    """`--this-site`, else $LOGSHIP_SITE, else the one site whose host is this
    machine's name; None when none (or several) match."""
    named = explicit or os.environ.get(THIS_SITE_ENV)
    if named:
        return named
    mine = _host_names()
    matches = [site for site, host in hosts.items() if host.lower() in mine]
    return matches[0] if len(matches) == 1 else None
