"""Throwaway PostgreSQL clusters and OpenSSH servers for the test suite and ``logship demo``.

Everything runs on 127.0.0.1 under a private directory; when run as root, services and
their clients are switched to an unprivileged OS user (``postgres``).
"""

from logship.sandbox.osuser import CommandError, OsUser, ensure_login_allowed
from logship.sandbox.ports import free_port
from logship.sandbox.postgres import PgCluster
from logship.sandbox.sshd import SshServer

__all__ = [
    "CommandError",
    "OsUser",
    "PgCluster",
    "SshServer",
    "ensure_login_allowed",
    "free_port",
]
