"""Several processes opening one new catalog at the same moment (the daemon,
base-backup and status at first start) all get it, with every table and index,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

from sqlalchemy import inspect

from logship.catalog.models import Base
from logship.catalog.store import Catalog
from logship.demo_sandbox import OsUser, PgCluster, free_port

OPENERS = 6
ROUNDS = 8
OPEN_TIMEOUT_S = 60.0


def _open(url: str, start: multiprocessing.synchronize.Barrier) -> None:
    try:
        start.wait(OPEN_TIMEOUT_S)
        Catalog(url).close()
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None


def _open_together(url: str) -> list[int | None]:
    # fork: the children start at once, with SQLAlchemy already imported, so
    # they reach the schema check within microseconds of each other.
    context = multiprocessing.get_context("fork")
    start = context.Barrier(OPENERS)
    openers = [context.Process(target=_open, args=(url, start)) for _ in range(OPENERS)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(OPEN_TIMEOUT_S)
    codes = [opener.exitcode for opener in openers]
    for opener in openers:
        if opener.is_alive():
            opener.kill()
            opener.join()
    return codes


def _schema(url: str) -> dict[str, tuple[set[str], set[str]]]:
    """Each table's columns and indexes, as the catalog at `url` has them."""
    catalog = Catalog(url)
    try:
        inspector = inspect(catalog.engine)
        return {
            table: (
                {column["name"] for column in inspector.get_columns(table)},
                {index["name"] for index in inspector.get_indexes(table)},
            )
            for table in inspector.get_table_names()
        }
    finally:
        catalog.close()


def test_processes_opening_a_new_sqlite_catalog_together_all_succeed(tmp_path: Path) -> None:
    alone = _schema(f"sqlite:///{tmp_path / 'alone.db'}")
    assert set(alone) == set(Base.metadata.tables)
    for round_ in range(ROUNDS):
        url = f"sqlite:///{tmp_path / f'catalog-{round_}.db'}"
        assert _open_together(url) == [0] * OPENERS, f"round {round_}"
        assert _schema(url) == alone


def test_processes_opening_a_new_postgresql_catalog_together_all_succeed(
    reachable_dir: Path, pg_user: OsUser
) -> None:
    with PgCluster(reachable_dir / "catalog-db", free_port(), pg_user) as cluster:
        server = f"postgresql+psycopg://{pg_user.name}@127.0.0.1:{cluster.port}"
        alone = _schema(f"{server}/postgres")
        assert set(alone) == set(Base.metadata.tables)
        for round_ in range(ROUNDS):
            cluster.execute(f"CREATE DATABASE catalog_{round_}")
            url = f"{server}/catalog_{round_}"
            assert _open_together(url) == [0] * OPENERS, f"round {round_}"
            assert _schema(url) == alone
