"""No secret on a child's command line, and none in an error line.

A child's argv is readable by every local user (`ps`). A real PostgreSQL asks a
role with a password (scram-sha-256 in pg_hba.conf) and a real base backup runs;
pg_basebackup is reached through a `bin_dir` wrapper that records
/proc/self/cmdline (what `ps` shows) and the password file it is handed before it
execs the real program.

A catalog that cannot be opened is reported by every verb that opens it, through
the real CLI, without the password of its URL.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cli_run
import pytest

from logship.config.load import load_config
from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.engines.postgresql.base_backup import take_base_backup
from logship.engines.postgresql.secret import dsn_for_child
from logship.errors import OperationFailed
from logship.ship.localdir import LocalDirTransport

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROLE = "backup_robot"
# Characters the password file must escape, so the round trip is proven too.
PASSWORD = "S3cret:pw\\with-colon"
CONNECTOR = "orders"

WRAPPER = """#!{python}
import json, os, stat, sys
from psycopg.conninfo import conninfo_to_dict

with open("/proc/self/cmdline", "rb") as fh:
    cmdline = [arg.decode() for arg in fh.read().split(b"\\0") if arg]
record = {{"cmdline": cmdline, "env_keys": sorted(os.environ)}}
dsn = sys.argv[sys.argv.index("-d") + 1]
passfile = conninfo_to_dict(dsn).get("passfile")
if passfile:
    record["passfile"] = passfile
    record["passfile_mode"] = stat.S_IMODE(os.stat(passfile).st_mode)
    record["passfile_dir_mode"] = stat.S_IMODE(os.stat(os.path.dirname(passfile)).st_mode)
with open({record!r}, "w") as out:
    json.dump(record, out)
os.execv({real!r}, [{real!r}, *sys.argv[1:]])
"""


@dataclass
class Primary:
    base: Path
    cluster: PgCluster


@pytest.fixture(scope="module")
def primary() -> Iterator[Primary]:
    base = Path(tempfile.mkdtemp(prefix="logship-secrets-", dir="/tmp"))
    base.chmod(0o755)
    cluster = PgCluster(base / "primary" / "data", free_port(), OsUser.for_postgres())
    try:
        cluster.initdb()
        hba = cluster.data_dir / "pg_hba.conf"
        # First match wins: the robot must give its password, over TCP, for both.
        rules = (
            f"host replication {ROLE} 127.0.0.1/32 scram-sha-256\n"
            f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
        )
        hba.write_text(rules + hba.read_text())
        cluster.configure({"password_encryption": "scram-sha-256"})
        cluster.start()
        escaped = PASSWORD.replace("'", "''")
        cluster.execute(f"create role {ROLE} login replication password '{escaped}'")
        yield Primary(base, cluster)
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _config(
    directory: Path, dsn: str, bin_dir: Path = PG_BIN, catalog_url: str | None = None
) -> Path:
    (directory / "connectors").mkdir(parents=True)
    config = directory / "logship.toml"
    catalog = "" if catalog_url is None else f"catalog_url = {json.dumps(catalog_url)}\n"
    config.write_text(
        f"""[logship]
state_dir = "{directory / "state"}"
{catalog}
[sites.dr]
host = "127.0.0.1"
user = "nobody"
identity_file = "{directory / "no-key"}"
known_hosts = "{directory / "no-known-hosts"}"
root = "{directory / "site"}"
"""
    )
    (directory / "connectors" / f"{CONNECTOR}.toml").write_text(
        f"""kind = "postgresql"
site = "dr"
rpo = "60s"

[primary]
dsn = {json.dumps(dsn)}
bin_dir = "{bin_dir}"

[standby]
dsn = "host=127.0.0.1 port=1"
data_dir = "{directory / "unused"}"
"""
    )
    (directory / "connectors" / "app-files.toml").write_text(
        f"""kind = "files"
site = "dr"
rpo = "60s"
source = "{directory}"

[standby]
target = "/srv/app-files"
"""
    )
    return config


def _wrapper_dir(directory: Path, record: Path) -> Path:
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "pg_basebackup"
    wrapper.write_text(
        WRAPPER.format(
            python=sys.executable, record=str(record), real=str(PG_BIN / "pg_basebackup")
        )
    )
    wrapper.chmod(0o755)
    return bin_dir


def test_base_backup_password_is_in_no_argv(primary: Primary, tmp_path: Path) -> None:
    record_path = tmp_path / "argv.json"
    port = primary.cluster.port
    quoted = PASSWORD.replace("\\", "\\\\")  # libpq: a backslash escapes in quotes
    dsn = f"host=127.0.0.1 port={port} user={ROLE} dbname=postgres password='{quoted}'"
    config = load_config(_config(tmp_path, dsn, _wrapper_dir(tmp_path, record_path)))
    (tmp_path / "site").mkdir()

    record = take_base_backup(config, CONNECTOR, LocalDirTransport(), time.time)

    # The backup worked, so the password did reach pg_basebackup...
    assert record.size > 0
    seen = json.loads(record_path.read_text())
    # ...but not through its command line.
    # (In the DSN the password is quoted, so look for a piece no escaping changes.)
    assert all("S3cret" not in arg for arg in seen["cmdline"]), seen["cmdline"]
    assert all("password=" not in arg for arg in seen["cmdline"]), seen["cmdline"]
    assert "PGPASSWORD" not in seen["env_keys"]
    assert seen["passfile_mode"] == 0o600
    assert seen["passfile_dir_mode"] == 0o700
    assert not Path(seen["passfile"]).parent.exists()  # removed once the backup ended


def test_uri_dsn_password_is_taken_out_and_the_file_removed() -> None:
    with dsn_for_child("postgresql://robot:p%40ss@db.example.net:5433/app") as child:
        assert "p@ss" not in child.dsn and "password" not in child.dsn
        assert "host=db.example.net" in child.dsn and "port=5433" in child.dsn
        passfile = Path(child.dsn.split("passfile=")[1].split()[0].strip("'"))
        assert passfile.read_text() == "*:*:*:*:p@ss\n"
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert not passfile.parent.exists()


def test_dsn_without_password_is_handed_on_unchanged() -> None:
    with dsn_for_child("host=/var/run/postgresql dbname=app") as child:
        assert child.dsn == "host=/var/run/postgresql dbname=app"
        assert child.env == {}


def test_password_with_a_line_break_goes_in_the_environment() -> None:
    with dsn_for_child("host=db password='a\nb'") as child:
        assert "password" not in child.dsn
        assert child.env == {"PGPASSWORD": "a\nb"}


CATALOG_SECRET = "TopSecret42"


def _robot_dsn(primary: Primary) -> str:
    quoted = PASSWORD.replace("\\", "\\\\")
    where = f"host=127.0.0.1 port={primary.cluster.port} dbname=postgres"
    return f"{where} user={ROLE} password='{quoted}'"


def _logship(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_run.logship(config, *args, env={**os.environ, "NO_COLOR": "1"}, cwd="/")


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://logship:{CATALOG_SECRET}@127.0.0.1:{{port}}/catalog",
        # A URL SQLAlchemy cannot parse is masked all the same.
        f"nosuchdb+driver://logship:{CATALOG_SECRET}@127.0.0.1:{{port}}/catalog",
    ],
)
def test_catalog_password_is_never_printed(primary: Primary, tmp_path: Path, url: str) -> None:
    closed = free_port()  # nothing listens: the catalog cannot be opened
    catalog_url = url.format(port=closed)
    config = _config(tmp_path, _robot_dsn(primary), catalog_url=catalog_url)
    (tmp_path / "site").mkdir()
    runs = {
        "retention": _logship(config, "retention", CONNECTOR),
        "verify": _logship(config, "verify", "app-files"),
        "mark": _logship(config, "mark", CONNECTOR),
        "status": _logship(config, "status"),
        "run": _logship(config, "run"),
    }
    for verb, done in runs.items():
        output = done.stdout + done.stderr
        assert done.returncode != 0, (verb, output)
        assert "catalog" in output, (verb, output)
        assert CATALOG_SECRET not in output, (verb, output)
    # base-backup opens the catalog once pg_basebackup has started.
    with pytest.raises(OperationFailed, match="cannot open the catalog") as info:
        take_base_backup(load_config(config), CONNECTOR, LocalDirTransport(), time.time)
    assert CATALOG_SECRET not in str(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://u:TopSecret42@h/db", "postgresql+psycopg://u:***@h/db"),
        (
            "postgresql+psycopg://u@h/db?password=TopSecret42&sslmode=require",
            "postgresql+psycopg://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://u:TopSecret42@h:notaport/db", "postgresql://u:***@h:notaport/db"),
        ("u:TopSecret42@h", "(catalog_url, not a valid URL)"),
        ("sqlite:////var/lib/logship/catalog.db", "sqlite:////var/lib/logship/catalog.db"),
    ],
)
def test_catalog_url_as_shown_and_error_text_scrubbed(url: str, shown: str) -> None:
    from logship.catalog.opening import scrub, shown_url

    assert shown_url(url) == shown
    if "TopSecret42" in url and "://" in url:
        assert "TopSecret42" not in scrub(f"failed for {url}: TopSecret42 rejected", url)
