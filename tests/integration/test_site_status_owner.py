"""What status says of a site is each connector's own link, not the last worker's word.

A PostgreSQL connector and a files connector on the same site each have a worker
with its own SSH link (real sshd, real catalog): one of them reconnecting or
losing its link must not rewrite what the other one found.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

from logship.catalog.store import Catalog, NewFile
from logship.config.load import load_config
from logship.config.model import Config, SiteConfig
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.files.worker import FilesWorker
from logship.engines.registry import engine_for
from logship.manifest import SiteLayout
from logship.ship.sftp import SftpTransport
from logship.ship.site_worker import ShipTarget, SiteWorker
from logship.ship.transport import Transport
from logship.status.monitor import collect_statuses

pytestmark = pytest.mark.slow

WAL = "main"
FILES = "app"
SEGMENT = "000000010000000000000001"
#: long enough that the WAL worker asks the standby once only in a test
SAMPLE_INTERVAL = 3600.0


class FullDiskTransport(SftpTransport):
    """The real link; the site's WAL folder answers as a full file system does."""

    def put_atomic(self, path: PurePosixPath, chunks):  # type: ignore[no-untyped-def]
        if "/wal/" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().put_atomic(path, chunks)

    def free_bytes(self, path: PurePosixPath) -> int | None:
        return 0


@dataclass
class CuttableLinks:
    """Connects for real until cut; then every link it made breaks, and no new one
    can be made (the files worker's own link lost, the others' not)."""

    made: list[SftpTransport] = field(default_factory=list)
    cut: bool = False

    def connect(self, site: SiteConfig) -> Transport:
        if self.cut:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused")
        transport = SftpTransport(site)
        self.made.append(transport)
        return transport

    def cut_all(self) -> None:
        self.cut = True
        for transport in self.made:
            transport.close()


@dataclass
class Pair:
    dep: Deployment
    config: Config
    catalog: Catalog
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def status(self, connector: str) -> dict[str, object]:
        (status,) = collect_statuses(self.config, self.catalog, [connector], time.time())
        return status.to_json()


@pytest.fixture
def pair(deployment: Deployment) -> Iterator[Pair]:
    """The deployment's PostgreSQL connector and a files connector on its site."""
    dep = deployment
    dep.connections = 1  # one file to ship: the worker's own connection ships it
    dep.write_config()
    source = dep.root / "app-source"
    source.mkdir()
    (source / "app.conf").write_text("port = 8080\n")
    target = dep.root / "standby-site" / "app"  # made by the files worker, as the SSH user
    (dep.config_dir / "connectors" / f"{FILES}.toml").write_text(
        f'kind = "files"\nsite = "dr"\nrpo = "60s"\nsource = "{source}"\nsettle = "0.1s"\n'
        f'\n[standby]\ntarget = "{target}"\n'
    )
    config = load_config(dep.config_path)
    pair = Pair(dep, config, Catalog(config.catalog_url))
    try:
        yield pair
    finally:
        pair.stop.set()
        for thread in pair.threads:
            thread.join(timeout=60)
        pair.catalog.close()


def _start_wal_worker(pair: Pair, connect) -> None:  # type: ignore[no-untyped-def]
    config = pair.config
    connector = config.connectors[WAL]
    site = config.site_of(connector)
    worker = SiteWorker(
        site,
        [
            ShipTarget(
                connector=WAL,
                kind="postgresql",
                spool_dir=config.spool_dir(WAL),
                compression=connector.compression,
                layout=SiteLayout.for_connector(site.root, WAL),
            )
        ],
        pair.catalog,
        connect,
        time.time,
        SAMPLE_INTERVAL,
        pair.stop,
    )
    worker.start()
    pair.threads.append(worker)


def _start_files_worker(pair: Pair, connect) -> None:  # type: ignore[no-untyped-def]
    config = pair.config
    connector = config.connectors[FILES]
    worker = FilesWorker(
        connector,
        config.site_of(connector),
        pair.catalog,
        connect,
        time.time,
        config.logship.reconcile_interval,
        pair.stop,
    )
    worker.start()
    pair.threads.append(worker)


def _spool_segment(pair: Pair) -> None:
    spool = pair.config.spool_dir(WAL)
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / SEGMENT
    path.write_bytes(os.urandom(64 * 1024))
    now = time.time()
    order = engine_for("postgresql").ship_order(SEGMENT)
    pair.catalog.add_discovered(NewFile(WAL, SEGMENT, order, 64 * 1024, now), now)


def _tree_shipped(pair: Pair) -> bool:
    status = pair.status(FILES)
    return status["last_shipped"] == "app.conf" and status["pending_files"] == 0


def test_a_files_link_coming_up_keeps_the_wal_workers_full_disk_error(pair: Pair) -> None:
    _spool_segment(pair)
    _start_wal_worker(pair, FullDiskTransport)

    def full() -> bool:
        return "no space left" in str(pair.status(WAL)["site_error"] or "")

    wait_for(full, 60, "the WAL worker to report the site's full disk")
    # The WAL worker stands still (its retries would only hide what follows).
    pair.stop.set()
    pair.threads.pop().join(timeout=60)
    pair.stop.clear()

    _start_files_worker(pair, SftpTransport)
    wait_for(lambda: _tree_shipped(pair), 60, "the tree shipped")
    assert full(), pair.status(WAL)


def test_a_files_link_lost_does_not_mark_the_site_down_for_wal(pair: Pair) -> None:
    _start_wal_worker(pair, SftpTransport)
    # The first sample of the standby is the WAL worker's last word on the site
    # for SAMPLE_INTERVAL: from here on, only the files worker writes.
    wait_for(lambda: pair.catalog.standby_progress(WAL) is not None, 60, "the standby sampled once")
    assert pair.status(WAL)["state"] != "down"

    links = CuttableLinks()
    _start_files_worker(pair, links.connect)
    wait_for(lambda: _tree_shipped(pair), 60, "the tree shipped")
    links.cut_all()
    # A change to ship finds the files worker's link gone.
    (Path(pair.config.connectors[FILES].source) / "new.conf").write_text("changed\n")
    wait_for(lambda: pair.status(FILES)["state"] == "down", 60, "the files link reported down")

    wal = pair.status(WAL)
    assert wal["state"] != "down", wal
    assert wal["site_error"] is None, wal
