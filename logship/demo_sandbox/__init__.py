"""``logship demo``'s sandbox: throwaway PostgreSQL clusters, OpenSSH servers, a deployment.

The test suite and the benchmarks build on it too; what only they use (link
faults, an odd SFTP server) is in the checkout's testkit/, not in the package.

Everything runs on 127.0.0.1 under a private directory; when run as root, services and
their clients are switched to an unprivileged OS user (``postgres``).
"""

from logship.demo_sandbox.osuser import CommandError, OsUser, ensure_login_allowed
from logship.demo_sandbox.ports import free_port
from logship.demo_sandbox.postgres import PgCluster
from logship.demo_sandbox.sshd import SshServer

__all__ = [
    "CommandError",
    "OsUser",
    "PgCluster",
    "SshServer",
    "ensure_login_allowed",
    "free_port",
]
