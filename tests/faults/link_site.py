"""The site's sshd behind a namespace link and a relay (see testkit.netns)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from logship.demo_sandbox.deployment import Deployment
from testkit.netns import SiteLink
from testkit.relay import DelayRelay


@contextlib.contextmanager
def behind_relay(dep: Deployment) -> Iterator[tuple[SiteLink, DelayRelay]]:
    """Reach `dep`'s site through a fresh link and relay; its config is rewritten,
    so set the deployment's other fields first. The daemon is stopped on the way out."""
    link = SiteLink.create()
    relay = None
    try:
        relay = DelayRelay((dep.sshd.host, dep.sshd.port), link.ns_ip, link.netns)
        dep.sshd.trust_address(*relay.address)
        dep.site_address = relay.address
        dep.write_config()
        yield link, relay
    finally:
        dep.stop_daemon(timeout=30)
        if relay is not None:
            relay.close()
        link.destroy()
