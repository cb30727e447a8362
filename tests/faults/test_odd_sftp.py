"""A site whose SFTP server answers some requests with odd errors.

sshd serves SFTP through testkit.sftp_faults, which passes everything to
OpenSSH's sftp-server except the requests its rules pick: those are answered with
an error and never performed. Whatever the error, nothing half-done may count as
shipped, the daemon must stay up, and once the errors stop everything ships once,
bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from site_checks import all_shipped, check_site

from logship.demo_sandbox.deployment import Deployment, wait_for
from testkit.sftp_faults import SFTP_SERVER, subsystem_command

FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE = 1, 2, 3, 4
FX_BAD_MESSAGE, FX_CONNECTION_LOST, FX_OP_UNSUPPORTED = 5, 7, 8

RULES = [
    {"op": "OPEN", "after": 2, "times": 1, "code": FX_PERMISSION_DENIED},
    {"op": "WRITE", "after": 5, "times": 1, "code": FX_FAILURE, "message": "odd failure"},
    {"op": "WRITE", "after": 40, "times": 1, "code": FX_CONNECTION_LOST},
    {"op": "WRITE", "after": 60, "times": 1, "code": FX_EOF},
    {"op": "fsync@openssh.com", "after": 2, "times": 1, "code": FX_OP_UNSUPPORTED},
    {"op": "posix-rename@openssh.com", "after": 1, "times": 1, "code": FX_FAILURE},
    {"op": "posix-rename@openssh.com", "after": 4, "times": 1, "code": FX_NO_SUCH_FILE},
    {"op": "STAT", "after": 3, "times": 1, "code": 31337, "message": "no such code"},
    {"op": "STAT", "after": 6, "times": 1, "code": FX_BAD_MESSAGE},
    {"op": "MKDIR", "after": 0, "times": 1, "code": FX_FAILURE},
    {"op": "CLOSE", "after": 3, "times": 1, "code": FX_FAILURE},
]


@pytest.mark.e2e
@pytest.mark.skipif(not Path(SFTP_SERVER).exists(), reason=f"{SFTP_SERVER} is not installed")
def test_odd_sftp_errors_do_no_damage(deployment: Deployment) -> None:
    dep = deployment
    rules = dep.root / "sftp-rules.json"
    rules.write_text(json.dumps(RULES))
    state = rules.with_name(rules.name + ".state")
    state.touch()
    dep.user.chown(state)  # the subsystem runs as the login user
    dep.sshd.use_sftp_subsystem(subsystem_command(rules))

    dep.start_daemon()
    dep.primary.pgbench("-i", "-s", "2", "-q")
    dep.primary.pgbench("-c", "2", "-T", "3", "-n")
    dep.switch_wal()
    wait_for(lambda: all_shipped(dep), 180, "every archived segment shipped")
    assert check_site(dep) >= 3

    counts = json.loads(state.read_text())
    unfired = [rule for i, rule in enumerate(RULES) if counts.get(str(i), 0) <= int(rule["after"])]
    assert not unfired, f"rules never reached: {unfired}"
    assert dep.daemon is not None and dep.daemon.poll() is None, "the daemon must stay up"
    log = dep.daemon_log.read_text()
    assert "Traceback" not in log
