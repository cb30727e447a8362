"""The Transport contract: the same behaviours from every transport to a site.

`LocalDirTransport` writes into a folder on this host; `SftpTransport` and
`GatedTransport` (a restricted site: `site-receive` behind a `site-gate` forced
command) reach a folder on this host through a real sshd, as the site's own
user. Every site here is on this host, so what landed is also looked at
directly on disk. Where a restricted site differs by design (it never replaces
or removes a file, and runs only logship's own commands), the test says so.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
from sshd_site import running_sshd, site_section

from logship import __version__
from logship.config.load import load_config
from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import wait_for
from logship.demo_sandbox.sshd import SshServer
from logship.ship.gated import GatedTransport
from logship.ship.localdir import LocalDirTransport
from logship.ship.sftp import SftpTransport
from logship.ship.transport import (
    RestrictedError,
    SiteOutputTooLarge,
    SiteRefused,
    Transport,
)
from logship.temp_names import is_temp_name

CONNECTOR = "main"
KINDS = ["local", "sftp", "gated"]
#: the site's own logship: the installed script, as a restricted site's gate runs it
LOGSHIP = str(Path(sys.executable).parent / "logship")


@dataclass
class Sshd:
    base: Path
    user: OsUser
    server: SshServer
    gate_key: Path


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    user = OsUser.for_postgres()
    with running_sshd("logship-contract-", user) as (base, server):
        conf = base / "conf" / "logship.toml"
        # The site's own config: site-gate reads it at every login (each case rewrites it).
        gate = f"{LOGSHIP} --config {conf} site-gate --site dr"
        gate_key = server.add_restricted_key(gate, "gate")
        yield Sshd(base, user, server, gate_key)


@dataclass
class Case:
    """A transport to a fresh site root, and the folder the test works in."""

    kind: str
    transport: Transport
    #: a writable folder at the site (below the connector's folder), not yet made
    folder: PurePosixPath
    #: the connector's folder at the site
    connector: PurePosixPath

    @property
    def restricted(self) -> bool:
        return self.kind == "gated"

    def on_disk(self, path: PurePosixPath) -> Path:
        return Path(path)  # every site here is on this host

    def temps(self) -> list[str]:
        folder = self.on_disk(self.folder)
        return sorted(n for n in os.listdir(folder) if is_temp_name(n))


_counter = iter(range(10_000))


def _write_config(sshd: Sshd, root: Path, key: Path) -> Path:
    conf = sshd.base / "conf"
    (conf / "connectors").mkdir(parents=True, exist_ok=True)
    conf.chmod(0o755)
    (conf / "connectors").chmod(0o755)
    path = conf / "logship.toml"
    path.write_text(
        f"""[logship]
state_dir = "{sshd.base / "state"}"

{site_section(sshd.server, root, identity_file=key)}connect_timeout = "5s"
io_timeout = "10s"
command = ["{LOGSHIP}"]
"""
    )
    (conf / "connectors" / f"{CONNECTOR}.toml").write_text(
        'kind = "postgresql"\nsite = "dr"\nrpo = "60s"\n'
        '[primary]\ndsn = "host=127.0.0.1 port=1"\n'
        f'[standby]\ndsn = "host=127.0.0.1 port=2"\ndata_dir = "{root / "standby"}"\n'
    )
    for written in (path, conf / "connectors" / f"{CONNECTOR}.toml"):
        written.chmod(0o644)
    return path


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    kind: str = request.param
    if kind == "local":
        root = Path(tempfile.mkdtemp(prefix="logship-contract-local-"))
        connector = PurePosixPath(root / CONNECTOR)
        transport: Transport = LocalDirTransport()
        try:
            yield Case(kind, transport, connector / "wal" / "case", connector)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    sshd: Sshd = request.getfixturevalue("sshd")
    root = sshd.base / f"site{next(_counter)}"
    root.mkdir(mode=0o700)
    sshd.user.chown(root)
    key = sshd.gate_key if kind == "gated" else sshd.server.client_key
    site = load_config(_write_config(sshd, root, key)).sites["dr"]
    if kind == "gated":
        site = site.model_copy(update={"restricted": True})
        transport = GatedTransport(site)
    else:
        transport = SftpTransport(site)
    connector = PurePosixPath(root / CONNECTOR)
    try:
        yield Case(kind, transport, connector / "wal" / "case", connector)
    finally:
        transport.close()


def _chunks(*sizes: int, fill: bytes = b"x") -> list[bytes]:
    return [fill * size for size in sizes]


# -- atomic put -------------------------------------------------------------------------


def test_put_lands_whole_and_private_and_says_how_much(case: Case) -> None:
    case.transport.makedirs(case.folder)
    path = case.folder / "000000010000000000000001"
    # Several write requests of an SFTP upload; below what a record may be read back.
    chunks = _chunks(1, 300_000, 600_000, 7)
    assert case.transport.put_atomic(path, chunks) == sum(map(len, chunks))
    assert case.transport.read_bytes(path) == b"".join(chunks)
    on_disk = case.on_disk(path)
    assert on_disk.read_bytes() == b"".join(chunks)
    assert stat.S_ISREG(on_disk.lstat().st_mode)
    assert on_disk.stat().st_mode & 0o077 == 0  # private to the site's user
    assert case.temps() == []


def test_put_of_nothing_makes_an_empty_file(case: Case) -> None:
    case.transport.makedirs(case.folder)
    path = case.folder / "empty"
    assert case.transport.put_atomic(path, []) == 0
    assert case.transport.read_bytes(path) == b""


def test_put_replaces_or_a_restricted_site_keeps_the_first(case: Case) -> None:
    case.transport.makedirs(case.folder)
    path = case.folder / "record.json"
    case.transport.put_atomic(path, [b"first"])
    # The same content again is a success everywhere (a retry after a lost reply).
    assert case.transport.put_atomic(path, [b"first"]) == 5
    if case.restricted:
        with pytest.raises(SiteRefused, match="exists with different content"):
            case.transport.put_atomic(path, [b"second"])
        assert case.transport.read_bytes(path) == b"first"
    else:
        assert case.transport.put_atomic(path, [b"second, longer"]) == 14
        assert case.transport.read_bytes(path) == b"second, longer"
    assert case.transport.listdir(case.folder) == ["record.json"]
    assert case.temps() == []


class _Broken(Exception):
    pass


def _failing_after(chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield from chunks
    raise _Broken("the source failed midway")


@pytest.mark.parametrize("existing", [None, b"the old content"], ids=["new", "replacing"])
def test_a_put_that_fails_midway_leaves_the_old_content_or_nothing(
    case: Case, existing: bytes | None
) -> None:
    case.transport.makedirs(case.folder)
    path = case.folder / "000000010000000000000002"
    if existing is not None:
        case.transport.put_atomic(path, [existing])
    with pytest.raises(_Broken):
        case.transport.put_atomic(path, _failing_after(_chunks(1 << 20, 1 << 20)))
    # The failure may close a restricted site's channel: the site drops the temp.
    wait_for(lambda: case.temps() == [], 10, "the failed put's temp removed")
    assert case.transport.read_bytes(path) == existing
    on_disk = case.on_disk(path)
    assert (on_disk.read_bytes() if on_disk.exists() else None) == existing


@pytest.mark.parametrize("existing", [None, b"the old content"], ids=["new", "replacing"])
def test_a_put_cut_by_a_lost_link_leaves_the_old_content_or_nothing(
    case: Case, existing: bytes | None
) -> None:
    if case.kind == "local":
        pytest.skip("no link to lose")
    transport = case.transport
    transport.makedirs(case.folder)
    path = case.folder / "000000010000000000000003"
    if existing is not None:
        transport.put_atomic(path, [existing])

    def cut_midway() -> Iterator[bytes]:
        yield b"y" * (1 << 20)
        transport.close()  # the connection is gone while the file is half sent
        yield b"y" * (1 << 20)

    with pytest.raises(Exception):  # noqa: B017 - whatever the lost link raises
        transport.put_atomic(path, cut_midway())
    on_disk = case.on_disk(path)
    assert (on_disk.read_bytes() if on_disk.exists() else None) == existing
    # A temp may stay behind over SFTP (the site's sweep's business); never a
    # partial file under a name a reader looks for.
    names = os.listdir(case.on_disk(case.folder))
    assert [n for n in names if not is_temp_name(n)] == ([] if existing is None else [path.name])


# -- reading ----------------------------------------------------------------------------


def test_a_missing_file_reads_as_none(case: Case) -> None:
    case.transport.makedirs(case.folder)
    assert case.transport.read_bytes(case.folder / "absent") is None
    assert case.transport.read_bytes(case.folder / "no-folder" / "absent") is None
    assert case.transport.stat_mode(case.folder / "absent") is None
    assert case.transport.listdir(case.folder / "no-folder") == []


# -- folders ----------------------------------------------------------------------------


def test_makedirs_makes_private_folders_and_parents_and_may_run_again(case: Case) -> None:
    deep = case.folder / "a" / "b"
    case.transport.makedirs(deep)
    case.transport.makedirs(deep)  # already there: fine
    made = [deep, deep.parent, case.folder]
    for folder in made:
        mode = case.transport.stat_mode(folder)
        assert mode is not None and stat.S_ISDIR(mode), folder
        assert stat.S_IMODE(mode) == 0o700, f"{folder}: {stat.S_IMODE(mode):o}"
        assert stat.S_IMODE(case.on_disk(folder).stat().st_mode) == 0o700
    assert case.transport.listdir(case.folder) == ["a"]


def test_a_file_in_the_way_of_a_folder_is_an_error(case: Case) -> None:
    case.transport.makedirs(case.folder)
    case.transport.put_atomic(case.folder / "plain", [b"x"])
    with pytest.raises(Exception):  # noqa: B017 - each transport says it its own way
        case.transport.makedirs(case.folder / "plain" / "below")
    assert case.transport.read_bytes(case.folder / "plain") == b"x"


# -- removing ---------------------------------------------------------------------------


def test_removes_are_idempotent_or_refused_at_a_restricted_site(case: Case) -> None:
    folder = case.folder / "gone"
    case.transport.makedirs(folder)
    path = folder / "file"
    case.transport.put_atomic(path, [b"x"])
    if case.restricted:
        with pytest.raises(RestrictedError):
            case.transport.remove(path)
        with pytest.raises(RestrictedError):
            case.transport.rmdir(folder)
        assert case.transport.read_bytes(path) == b"x"
        return
    case.transport.remove(path)
    case.transport.remove(path)  # already gone: fine
    case.transport.remove(folder / "never-there")
    assert case.transport.read_bytes(path) is None
    case.transport.rmdir(folder)
    case.transport.rmdir(folder)
    case.transport.rmdir(case.folder / "never-there")
    assert case.transport.stat_mode(folder) is None


# -- append_durably ---------------------------------------------------------------------


def test_append_durably_creates_a_private_log_and_appends(case: Case) -> None:
    # A restricted site appends only to its append-only logs, in the connector's folder.
    case.transport.makedirs(case.folder)
    log = case.connector / "generations.jsonl"
    case.transport.append_durably(log, b'{"n": 1}\n')
    case.transport.append_durably(log, b'{"n": 2}\n')
    assert case.transport.read_bytes(log) == b'{"n": 1}\n{"n": 2}\n'
    assert stat.S_IMODE(case.on_disk(log).stat().st_mode) == 0o600


# -- free space -------------------------------------------------------------------------


def test_free_space_is_what_the_site_has(case: Case) -> None:
    case.transport.makedirs(case.folder)
    free = case.transport.free_bytes(case.folder)
    assert isinstance(free, int)
    vfs = os.statvfs(case.on_disk(case.folder))
    # Other work on this host writes meanwhile: the same file system, near enough.
    assert abs(free - vfs.f_bavail * vfs.f_frsize) < 256 << 20


# -- running a command ------------------------------------------------------------------


def test_the_sites_logship_runs_and_answers(case: Case) -> None:
    code, out, err = case.transport.run_command([LOGSHIP, "--version"], timeout=60)
    assert (code, out.decode().strip()) == (0, f"logship {__version__}"), err


def test_a_command_gives_its_status_and_both_outputs_or_is_refused(case: Case) -> None:
    argv = ["sh", "-c", "printf out; printf err >&2; exit 3"]
    if case.restricted:
        with pytest.raises(RestrictedError):
            case.transport.run_command(argv, timeout=30)
        return
    assert case.transport.run_command(argv, timeout=30) == (3, b"out", b"err")


def test_a_command_printing_past_the_limit_is_an_error(case: Case) -> None:
    if case.restricted:
        pytest.skip("a restricted site runs only logship's own commands")
    with pytest.raises(SiteOutputTooLarge):
        case.transport.run_command(["head", "-c", "100000", "/dev/zero"], timeout=30, limit=1000)


# -- the connection ---------------------------------------------------------------------


def test_a_transport_says_whether_its_connection_stands(case: Case) -> None:
    """The workers tell a site refusing an operation (the connection stands) from a
    lost link (it does not) by `is_alive`."""
    assert case.transport.is_alive
    if case.kind == "local":
        return  # a folder on this host: there is no connection to lose
    case.transport.close()
    assert not case.transport.is_alive
