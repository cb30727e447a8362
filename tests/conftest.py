"""Shared fixtures (folders the postgres user can reach, real clusters and sshd) and
the markers that follow from a test's folder.

A test's kind is its folder under tests/, and that folder is its marker:
unit (pure logic: no sshd, no PostgreSQL), contract (the suites every engine
or transport must pass), integration (real PostgreSQL and/or sshd, not end to
end), e2e (the whole DR cycle: daemon and sites) and faults (fault injection).
The fast subset is `-m "not e2e and not slow"`: `slow` marks the integration
files that take long, and fault tests on the whole path are marked e2e one by
one. The `status --json` fields the tests hold the code to are in status_contract.py.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_site import reachable_tmp

from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import Deployment
from logship.demo_sandbox.two_sites import TwoSiteDeployment

# The test kit (testkit/) is imported from the checkout, but logship from the venv
# that dev.sh installs it into: the root goes last on the path, not first.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))


TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "contract", "integration", "e2e", "faults")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced = set()
    for item in items:
        kind = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if kind in KINDS:
            item.add_marker(kind)
        else:
            misplaced.add(str(item.path))
    if misplaced:
        raise pytest.UsageError(
            f"tests outside tests/{{{','.join(KINDS)}}}/, whose folder names their kind: "
            + ", ".join(sorted(misplaced))
        )
    # The soak runs for half an hour: only when the -m expression names it. A
    # marker in addopts would be replaced by any -m given on the command line.
    if "soak" not in (config.option.markexpr or ""):
        soak = [item for item in items if item.get_closest_marker("soak")]
        if soak:
            config.hook.pytest_deselected(items=soak)
            items[:] = [item for item in items if not item.get_closest_marker("soak")]


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """The CLI's `main` sets the process umask to 077, as it must for logship's own
    files; a test that calls it in-process must not hand that to the next test,
    whose folders the postgres user has to enter."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture
def pg_user() -> OsUser:
    return OsUser.for_postgres()


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A temp folder the postgres user can enter (pytest's tmp_path is root-only)."""
    path = reachable_tmp("logship-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _built(dep: Deployment) -> Iterator[Deployment]:
    """`dep` with its primary built, torn down after the test."""
    try:
        dep.build_primary()
        yield dep
    finally:
        dep.teardown()


@pytest.fixture
def deployment(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    """sshd + primary archiving through logship; the test brings up the rest."""
    yield from _built(Deployment(reachable_dir / "deploy", pg_user))


@pytest.fixture
def read_ahead(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    """As `deployment`, with `[primary] data_dir` set: WAL ships from pg_wal as soon
    as PostgreSQL marks it ready, and archive-wal confirms it."""
    yield from _built(Deployment(reachable_dir / "deploy", pg_user, read_ahead=True))


def _two_sites(root: Path, user: OsUser, **options: bool) -> Iterator[TwoSiteDeployment]:
    """Two sites, the primary at main with the ticker's table and pgbench's, the
    standby at dr restored, and `logship run` at both."""
    from ticker import SETUP

    dep = TwoSiteDeployment(root, user, **options)
    try:
        dep.build_primary()
        dep.primary.execute(SETUP)
        dep.primary.pgbench("-i", "-s", "2", "-q")
        dep.standby_up()
        for site in ("main", "dr"):
            dep.start_site_daemon(site)
        yield dep
    finally:
        dep.teardown()


@pytest.fixture
def two_sites(reachable_dir: Path, pg_user: OsUser) -> Iterator[TwoSiteDeployment]:
    yield from _two_sites(reachable_dir / "deploy", pg_user)


@pytest.fixture
def two_sites_without_hints(reachable_dir: Path, pg_user: OsUser) -> Iterator[TwoSiteDeployment]:
    """As `two_sites`, with neither data checksums nor wal_log_hints: pg_rewind
    cannot be trusted there."""
    yield from _two_sites(reachable_dir / "deploy", pg_user, checksums=False, wal_log_hints=False)


@pytest.fixture
def restricted(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    """As `deployment`, with the primary's key a `site-gate` forced command at the
    site and `restricted = true` in the config."""
    yield from _built(Deployment(reachable_dir / "deploy", pg_user, restricted=True))
