"""What a deployment's site holds, read straight from its folder, and the steps
that put something there (a closed segment, a shipped base backup)."""

from __future__ import annotations

import time
from pathlib import Path

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql.base_backup import backup_id_for
from logship.engines.postgresql.retention_plan import segment_number
from logship.manifest import BackupRecord

SEG = 16 * 1024 * 1024


def site_dir(dep: Deployment) -> Path:
    """The connector's folder at the site."""
    return dep.incoming / dep.connector


def shipped(dep: Deployment, name: str) -> bool:
    """`name`'s record is at the site: it counts as shipped."""
    return (site_dir(dep) / "manifest" / f"{name}.json").exists()


def site_wal(dep: Deployment) -> set[str]:
    """The segments stored at the site, by WAL name (no temps)."""
    names = {p.name.removesuffix(".zst") for p in (site_dir(dep) / "wal").iterdir()}
    return {n for n in names if not n.startswith(".tmp.")}


def site_backups(dep: Deployment) -> dict[str, BackupRecord]:
    """The finished base backups at the site, by id."""
    base = site_dir(dep) / "base"
    return {
        p.name: BackupRecord.from_json((p / "backup.json").read_bytes())
        for p in (base.iterdir() if base.exists() else ())
        if (p / "backup.json").exists()
    }


def close_segment(dep: Deployment) -> str:
    """Switch WAL on the primary; the name of the segment just closed."""
    ((name,),) = dep.primary.query("select pg_walfile_name(pg_switch_wal())")
    return str(name)


def base_backup(dep: Deployment, previous: str | None) -> str:
    """A base backup shipped, and the segment closed after it at the site; its id."""
    # Backup ids are UTC seconds: a second backup in the same second is refused.
    wait_for(lambda: backup_id_for(time.time()) != previous, 5, "the next second")
    before = set(site_backups(dep))
    dep.logship("base-backup", dep.connector)
    (new,) = set(site_backups(dep)) - before
    closed = close_segment(dep)
    wait_for(lambda: shipped(dep, closed), 60, f"{closed} shipped")
    return new


def below(names: set[str], cutoff: str) -> set[str]:
    """The segments in `names` older than `cutoff`."""
    limit = segment_number(cutoff, SEG)
    assert limit is not None
    return {n for n in names if (number := segment_number(n, SEG)) is not None and number < limit}
