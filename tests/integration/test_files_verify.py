"""`verify` for a files connector: the comparison rules, the site's listing, and a
real run over a real sshd that catches a change made at the site behind logship's back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sshd_site import running_sshd, site_section

from logship.catalog.store import Catalog
from logship.cli.main import main
from logship.config.load import load_config
from logship.demo_sandbox import OsUser, SshServer
from logship.demo_sandbox.osuser import is_root
from logship.engines.files.digest import DigestEnd, DigestEntry, digest_tree, end_line, parse_line
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.scan import EntryKind
from logship.engines.files.verify import compare, display_path, is_pending
from logship.engines.files.verify_rows import finish_verify, last_verify, start_verify
from logship.engines.files.verify_run import site_listing
from logship.engines.postgresql.status import connector_status
from logship.status.jobs import JobFacts
from logship.temp_names import FILES_TEMP_PREFIX as TEMP_PREFIX

REPO = Path(__file__).resolve().parents[2]
SHA_A = "a" * 64
SHA_B = "b" * 64


def f(path: bytes, mode: int = 0o644, size: int = 3, sha: str = SHA_A) -> DigestEntry:
    return DigestEntry(path, EntryKind.FILE, mode, size, sha)


def d(path: bytes, mode: int = 0o755) -> DigestEntry:
    return DigestEntry(path, EntryKind.DIR, mode, 0)


def link(path: bytes, target: bytes) -> DigestEntry:
    return DigestEntry(path, EntryKind.SYMLINK, 0o777, len(target), None, target)


def problems(report: object) -> dict[bytes, tuple[str, ...]]:
    return {x.path: tuple(map(str, x.problems)) for x in report.differences}  # type: ignore[attr-defined]


# -- the comparison ------------------------------------------------------------------------


def test_every_kind_of_difference_is_named_per_path() -> None:
    source = [
        d(b"etc"),
        f(b"etc/app.conf"),
        f(b"etc/mode", mode=0o600),
        f(b"etc/size", size=3),
        f(b"etc/content", sha=SHA_A),
        f(b"etc/missing"),
        link(b"current", b"releases/1"),
        f(b"was-a-file"),
        f(b"same-mtime-ignored"),
    ]
    site = [
        d(b"etc"),
        f(b"etc/app.conf"),
        f(b"etc/mode", mode=0o644),
        f(b"etc/size", size=4, sha=SHA_B),
        f(b"etc/content", sha=SHA_B),
        link(b"current", b"releases/2"),
        d(b"was-a-file"),
        f(b"extra"),
        f(b"same-mtime-ignored"),
    ]
    report = compare(source, iter(site), delete=True, pending=set())
    assert problems(report) == {
        b"etc/mode": ("mode",),
        b"etc/size": ("size",),
        b"etc/content": ("sha256",),
        b"etc/missing": ("missing",),
        b"current": ("link_target",),
        b"was-a-file": ("kind",),
        b"extra": ("extra",),
    }
    assert report.checked == 10 and report.drift == 7 and report.state == "drift"
    data = report.to_json()
    assert (data["checked"], data["drift"], data["pending"], data["kept"]) == (10, 7, 0, 0)
    mode = next(x for x in data["differences"] if x["path"] == "etc/mode")
    assert (mode["source"]["mode"], mode["site"]["mode"]) == ("0600", "0644")
    (mode_diff,) = [x for x in report.differences if x.path == b"etc/mode"]
    assert mode_diff.describe() == "mode 0600 → 0644"


def test_an_unreadable_file_is_named_not_taken_for_changed_content() -> None:
    unreadable = DigestEntry(b"a", EntryKind.FILE, 0o644, 3, None, None, "Permission denied")
    report = compare([f(b"a")], [unreadable], delete=True, pending=set())
    assert problems(report) == {b"a": ("unreadable",)}
    assert report.differences[0].describe() == "unreadable at the site: Permission denied"


def test_identical_trees_are_clean_and_symlink_modes_do_not_count() -> None:
    tree = [d(b"a"), f(b"a/b"), link(b"l", b"a")]
    site = [d(b"a"), f(b"a/b"), DigestEntry(b"l", EntryKind.SYMLINK, 0o755, 1, None, b"a")]
    report = compare(tree, site, delete=True, pending=set())
    assert report.clean and report.checked == 3 and report.state == "clean"


def test_pending_paths_and_what_lies_below_them_are_not_drift() -> None:
    source = [f(b"new"), d(b"moved"), f(b"moved/x"), f(b"changed", sha=SHA_B)]
    site = [f(b"changed"), d(b"old"), f(b"old/x"), f(b"stale")]
    report = compare(source, site, delete=True, pending={b"new", b"moved", b"changed", b"old"})
    assert report.pending == [b"changed", b"moved", b"moved/x", b"new", b"old", b"old/x"]
    assert problems(report) == {b"stale": ("extra",)}
    assert is_pending(b"a/b/c", {b"a"}) and not is_pending(b"ab", {b"a"})


def test_without_delete_extra_paths_are_kept_not_drift() -> None:
    report = compare([f(b"a")], [f(b"a"), f(b"old.log"), d(b"archive")], delete=False, pending=None)
    assert report.clean and report.kept == [b"archive", b"old.log"]
    assert report.pending_known is False
    assert report.to_json()["kept"] == 2


def test_awkward_names_compare_as_bytes_and_show_escaped() -> None:
    newline, latin1 = b"we\nird", b"caf\xe9.txt"
    report = compare(
        [f(newline), f(latin1), f(b"back\\slash")],
        [f(newline, sha=SHA_B), f("café.txt".encode())],
        delete=True,
        pending=set(),
    )
    assert problems(report) == {
        newline: ("sha256",),
        latin1: ("missing",),
        b"back\\slash": ("missing",),
        "café.txt".encode(): ("extra",),
    }
    assert display_path(newline) == "we\\nird"
    assert display_path(latin1) == "caf\\xe9.txt"
    assert display_path("café.txt".encode()) == "café.txt"
    assert display_path(b"back\\slash") == "back\\\\slash"
    by_path = {x["path"]: x for x in report.to_json()["differences"]}
    import base64

    assert base64.b64decode(by_path["caf\\xe9.txt"]["path_b64"]) == latin1
    assert "\n" not in report.summary()


def test_digest_lines_round_trip_any_bytes() -> None:
    entry = DigestEntry(b"a/\n\xff", EntryKind.SYMLINK, 0o777, 2, None, b"\xfe\n")
    assert parse_line(entry.to_line()) == entry
    assert parse_line(end_line(3)) == DigestEnd(3)
    assert parse_line(end_line(None, "gone")) == DigestEnd(None, "gone")


def test_a_listing_cut_short_or_failing_is_an_error_not_missing_files() -> None:
    from logship.errors import OperationFailed

    lines = f(b"a").to_line() + "\n" + f(b"b").to_line() + "\n"
    assert [e.path for e in site_listing(0, (lines + end_line(2)).encode(), b"", "dr")] == [
        b"a",
        b"b",
    ]
    with pytest.raises(OperationFailed, match="before its listing was complete: killed"):
        list(site_listing(255, lines.encode(), b"killed\n", "dr"))
    with pytest.raises(OperationFailed, match="announced 3 entries but carried 2"):
        list(site_listing(0, (lines + end_line(3)).encode(), b"", "dr"))
    with pytest.raises(OperationFailed, match="does not exist"):
        list(site_listing(1, end_line(None, "x does not exist").encode(), b"", "dr"))
    with pytest.raises(OperationFailed, match="line 1"):
        list(site_listing(0, b"not json\n", b"", "dr"))


def test_digest_skips_temp_files_and_excluded_paths(tmp_path: Path) -> None:
    (tmp_path / "keep").write_bytes(b"x")
    (tmp_path / (TEMP_PREFIX.decode() + "keep.1234")).write_bytes(b"partial")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "junk").write_bytes(b"j")
    entries = list(digest_tree(tmp_path, ExcludeRules(["cache/"])))
    assert [(e.path, e.sha256) for e in entries] == [
        (b"keep", "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881")
    ]


# -- recording and status ------------------------------------------------------------------


def test_the_newest_finished_run_feeds_status_and_the_alert(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        assert last_verify(catalog, "site") is None
        report = compare([f(b"a"), f(b"b")], [f(b"a", mode=0o600)], delete=True, pending=set())
        first = start_verify(catalog, "site", 1_700_000_000.0)
        finish_verify(catalog, first, now=1_700_000_010.0, report=report)
        start_verify(catalog, "site", 1_700_000_020.0)  # still running: not a verdict
        row = last_verify(catalog, "site")
        assert row is not None and (row.state, row.drift, row.checked) == ("drift", 2, 2)
        detail = json.loads(row.detail or "{}")
        assert [x["path"] for x in detail["differences"]] == ["a", "b"]
        st = connector_status(
            name="site",
            kind="files",
            site="dr",
            rpo_target_s=60,
            now=1_700_000_030.0,
            files=[],
            jobs=JobFacts(last_verify=row),
        )
        assert (st.drift_files, st.verified_at) == (2, "2023-11-14T22:13:30Z")
        assert st.verify_error is None
        from logship.ui.status_table import status_notes

        notes = status_notes(st).plain
        assert "verify found 2 differences at site dr at 2023-11-14T22:13:30Z" in notes
        failed = start_verify(catalog, "site", 1_700_000_040.0)
        finish_verify(catalog, failed, now=1_700_000_041.0, error="site dr: cannot reach it")
        row = last_verify(catalog, "site")
        st = connector_status(
            name="site",
            kind="files",
            site="dr",
            rpo_target_s=60,
            now=1_700_000_050.0,
            files=[],
            jobs=JobFacts(last_verify=row),
        )
        assert (st.drift_files, st.verify_error) == (None, "site dr: cannot reach it")
        assert "verify failed at" in status_notes(st).plain
    finally:
        catalog.close()


def test_drift_alert_fires_once_per_verify() -> None:
    from dataclasses import replace

    from logship.config.model import AlertsSection
    from logship.status.alerts import AlertSink

    sink = AlertSink(AlertsSection(hooks=[["/bin/true"]]))
    try:
        seen = []
        sink._enqueue = seen.append  # type: ignore[method-assign]
        ok = connector_status(
            name="site", kind="files", site="dr", rpo_target_s=60, now=100.0, files=[]
        )
        one = replace(ok, drift_files=2, verified_at="2026-01-01T00:00:00Z")
        clean = replace(ok, drift_files=0, verified_at="2026-01-02T00:00:00Z")
        two = replace(ok, drift_files=1, verified_at="2026-01-03T00:00:00Z")
        for offset, status in enumerate([ok, one, one, clean, two, two]):
            sink.observe([status], 100.0 + offset)
        assert [(a.trigger, a.status.verified_at) for a in seen] == [
            ("drift", "2026-01-01T00:00:00Z"),
            ("drift", "2026-01-03T00:00:00Z"),
        ]
        assert seen[0].environment()["LOGSHIP_DRIFT_FILES"] == "2"
    finally:
        sink.close()


# -- for real: a site tree over a real sshd ------------------------------------------------


@dataclass
class Setup:
    base: Path
    user: OsUser
    source: Path
    target: Path
    config: Path


def _give(path: Path, user: OsUser) -> None:
    if is_root():
        subprocess.run(["chown", "-R", "-h", f"{user.uid}:{user.gid}", str(path)], check=True)


def _write_config(base: Path, sshd: SshServer, source: Path, target: Path) -> Path:
    conf = base / "conf"
    (conf / "connectors").mkdir(parents=True)
    config = conf / "logship.toml"
    command = [sys.executable, "-m", "logship", "--config", str(config)]
    config.write_text(
        f"""[logship]
state_dir = "{base / "state"}"

{site_section(sshd, base / "incoming")}command = {json.dumps(command)}
"""
    )
    for name, where in (("site", target), ("ghost", base / "no-such-folder")):
        (conf / "connectors" / f"{name}.toml").write_text(
            f"""kind = "files"
site = "dr"
rpo = "60s"
source = "{source}"
exclude = ["cache/", "*.swp"]

[standby]
target = "{where}"
"""
        )
    for path in conf.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    conf.chmod(0o755)
    return config


@pytest.fixture
def setup() -> Iterator[Setup]:
    user = OsUser.for_postgres()
    if not user.can_reach(REPO / "logship" / "__init__.py"):
        pytest.skip(f"{REPO} is not reachable by OS user {user.name}, which runs logship here")
    with running_sshd("logship-verify-", user) as (base, sshd):
        source = base / "source"
        (source / "etc").mkdir(parents=True)
        (source / "etc" / "app.conf").write_text("listen = 8080\n")
        (source / "secret.key").write_bytes(b"k" * 32)
        (source / "secret.key").chmod(0o600)
        (source / "data").mkdir()
        (source / "data" / "blob.bin").write_bytes(os.urandom(200_000))
        raw = os.fsencode(source / "data")
        with open(os.path.join(raw, b"we\nird"), "wb") as out:
            out.write(b"newline in the name")
        with open(os.path.join(raw, b"caf\xe9.txt"), "wb") as out:
            out.write(b"latin-1 name")
        (source / "current").symlink_to("data")
        (source / "cache").mkdir()
        (source / "cache" / "junk").write_text("never shipped")
        target = base / "site-tree"
        # The site's copy made directly, not by logship: verify must judge it alone.
        subprocess.run(["cp", "-a", str(source), str(target)], check=True)
        _give(target, user)
        config = _write_config(base, sshd, source, target)
        yield Setup(base, user, source, target, config)


def _logship(setup: Setup, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(setup.config), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_catches_a_change_made_at_the_site_behind_its_back(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _logship(setup, capsys, "verify", "site", "--json")
    assert (code, err) == (0, "")
    clean = json.loads(out)
    # etc, etc/app.conf, secret.key, data + 3 files, current; cache/ is excluded
    assert (clean["state"], clean["checked"], clean["drift"]) == ("clean", 8, 0)

    (setup.target / "etc" / "app.conf").write_text("listen = 6666\n")  # same size
    os.remove(os.path.join(os.fsencode(setup.target / "data"), b"caf\xe9.txt"))
    (setup.target / "secret.key").chmod(0o644)
    # Neither an upload in flight nor an excluded path is drift.
    (setup.target / f"{TEMP_PREFIX.decode()}app.conf.99").write_text("partial")
    (setup.target / "cache" / "more").write_text("ignored")
    _give(setup.target, setup.user)

    code, out, err = _logship(setup, capsys, "verify", "site", "--json")
    assert (code, err) == (1, "")
    report = json.loads(out)
    assert report["state"] == "drift" and report["drift"] == 3
    assert {(x["path"], tuple(x["problems"])) for x in report["differences"]} == {
        ("etc/app.conf", ("sha256",)),
        ("data/caf\\xe9.txt", ("missing",)),
        ("secret.key", ("mode",)),
    }

    code, out, err = _logship(setup, capsys, "verify", "site")
    words = " ".join(out.split())  # rich wraps to the terminal's width
    assert code == 1 and "3 differ" in words and "mode 0600 → 0644" in words

    catalog = Catalog(load_config(setup.config).catalog_url)
    try:
        row = last_verify(catalog, "site")
        assert row is not None and (row.state, row.drift, row.checked) == ("drift", 3, 8)
        assert len(json.loads(row.detail or "{}")["differences"]) == 3
    finally:
        catalog.close()
    code, out, _ = _logship(setup, capsys, "status", "--json")
    assert code in (0, 1)
    entry = next(c for c in json.loads(out)["connectors"] if c["name"] == "site")
    assert entry["drift_files"] == 3 and entry["verified_at"] is not None


def test_the_scheduled_action_fails_on_drift(setup: Setup) -> None:
    import time

    from logship.errors import OperationFailed
    from logship.jobs import run_action
    from logship.ship.sftp import SftpTransport

    config = load_config(setup.config)
    (setup.base / "state").mkdir(mode=0o700)
    catalog = Catalog(config.catalog_url)
    transport = SftpTransport(config.sites["dr"])
    try:
        outcome = run_action(
            "verify", config, "site", transport, catalog, time.time, drill_after_backup=False
        )
        assert "no drift" in outcome.summary
        (setup.target / "etc" / "app.conf").unlink()
        with pytest.raises(OperationFailed, match=r"verify found drift: .*etc/app\.conf"):
            run_action(
                "verify", config, "site", transport, catalog, time.time, drill_after_backup=False
            )
        row = last_verify(catalog, "site")
        assert row is not None and (row.state, row.drift) == ("drift", 1)
    finally:
        transport.close()
        catalog.close()


def test_a_missing_target_is_one_clear_failure(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _logship(setup, capsys, "verify", "ghost")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "does not exist at this site" in err and "no-such-folder" in err
    code, out, _ = _logship(setup, capsys, "status", "--json", "ghost")
    (entry,) = json.loads(out)["connectors"]
    assert entry["drift_files"] is None and "does not exist" in entry["verify_error"]
