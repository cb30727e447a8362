"""A config whose connectors point nowhere: for tests that only read the catalog."""

from __future__ import annotations

from pathlib import Path


def write_offline_config(
    root: Path, connectors: dict[str, str] | None = None, *, make_state: bool = True
) -> Path:
    """logship.toml + one connector per name -> RPO; nothing needs to run."""
    (root / "connectors").mkdir()
    if make_state:
        (root / "state").mkdir(mode=0o700)
    path = root / "logship.toml"
    path.write_text(
        f"""[logship]
state_dir = "{root / "state"}"

[sites.dr]
host = "127.0.0.1"
user = "logship"
identity_file = "{root / "id"}"
known_hosts = "{root / "known_hosts"}"
root = "/srv/incoming"
"""
    )
    for name, rpo in (connectors or {"orders": "60s", "billing": "5m"}).items():
        (root / "connectors" / f"{name}.toml").write_text(
            f"""kind = "postgresql"
site = "dr"
rpo = "{rpo}"
[primary]
dsn = "host=127.0.0.1 port=1"
[standby]
dsn = "host=127.0.0.1 port=2"
data_dir = "{root / "standby"}"
"""
        )
    return path
