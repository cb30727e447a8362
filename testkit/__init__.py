"""Test and benchmark support that is no part of logship, so it is not in the wheel.

Link faults (a network namespace behind a shaped veth pair, a relay that delays,
stalls or cuts) and an SFTP server that answers chosen requests with odd errors.
Tests import it from the repository root (pytest's `pythonpath`); the benchmarks
find it through bench/common.py. The demo's own sandbox (clusters, sshd, the
deployment) is in the product: logship.demo_sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the checkout this test kit belongs to: a child run as `python -m testkit.X`
#: needs it on its path, from whatever folder it starts in
REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
