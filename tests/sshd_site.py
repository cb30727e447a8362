"""A real site without a whole deployment: an sshd on loopback for the postgres
user, in a folder that user can reach, and the config that points logship at it."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from logship.config.model import SiteConfig
from logship.demo_sandbox import OsUser, SshServer


def reachable_tmp(prefix: str) -> Path:
    """A fresh folder under /tmp the postgres user can enter (pytest's tmp_path is
    in a 0700 tree of root's)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def running_sshd(prefix: str, user: OsUser) -> Iterator[tuple[Path, SshServer]]:
    """A started sshd that lets `user` in, in a fresh reachable folder (its `ssh/`);
    the server stopped and the folder removed on the way out."""
    base = reachable_tmp(prefix)
    sshd = SshServer(base / "ssh", user)
    try:
        sshd.start()
        yield base, sshd
    finally:
        sshd.stop()
        shutil.rmtree(base, ignore_errors=True)


def site_section(
    sshd: SshServer, root: Path, name: str = "dr", identity_file: Path | None = None
) -> str:
    """`[sites.NAME]` in logship.toml: `sshd`'s address, its login user's key (or
    `identity_file`) and the server's known_hosts, and `root` at the site."""
    return f"""[sites.{name}]
host = "{sshd.host}"
port = {sshd.port}
user = "{sshd.login_user.name}"
identity_file = "{identity_file or sshd.client_key}"
known_hosts = "{sshd.known_hosts}"
root = "{root}"
"""


def site_config(sshd: SshServer, root: Path, name: str = "dr", **fields: Any) -> SiteConfig:
    """The same site as `site_section`, as the loaded model; `fields` add to it."""
    return SiteConfig(
        name=name,
        host=sshd.host,
        port=sshd.port,
        user=sshd.login_user.name,
        identity_file=sshd.client_key,
        known_hosts=sshd.known_hosts,
        root=PurePosixPath(root),
        **fields,
    )
