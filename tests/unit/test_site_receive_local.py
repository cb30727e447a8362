"""The gate's decision and site-receive's folder, on real files without SSH: what
the forced command lets through, how names are checked, and the sweep of temps."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest
from offline_config import write_offline_config

from logship.site import gate_protocol as gp
from logship.site.gate import GateRefused, decide
from logship.site.receive_server import ConnectorFolder, Refused, Server, split_path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_offline_config(tmp_path)


@pytest.mark.parametrize(
    ("request_", "argv"),
    [
        ("--version", ["--version"]),
        ("site-receive orders", ["site-receive", "orders"]),
        ("standby status orders --json", ["standby", "status", "orders", "--json"]),
        ("standby status --json orders", ["standby", "status", "orders", "--json"]),
        ("standby status orders", ["standby", "status", "orders"]),
        ("standby stream-check orders", ["standby", "stream-check", "orders"]),
        (
            "drill orders --backup latest --json --stop-when-stdin-closes",
            ["drill", "orders", "--json", "--stop-when-stdin-closes", "--backup", "latest"],
        ),
    ],
)
def test_the_gate_lets_logship_site_commands_through(
    config: Path, request_: str, argv: list[str]
) -> None:
    assert decide(request_, config, "dr") == argv


@pytest.mark.parametrize(
    "request_",
    [
        None,
        "",
        "   ",
        "sftp",
        "internal-sftp",
        "site-receive nosuch",
        "site-receive orders billing",
        "site-receive 'orders'",
        "standby status",
        "standby status orders billing",
        "standby status orders --json --json",
        "standby status orders --config x",
        "standby stream-check",
        "standby stream-check nosuch",
        "standby stream-check orders --json",
        "standby stream-check orders billing",
        "drill orders --backup",
        "drill orders --backup -x",
        "tree-receive orders",
        "site-receive orders;id",
        "site-receive $(id)",
        "site-receive `id`",
        "site-receive orders\nid",
        "--config /tmp/x standby status orders",
    ],
)
def test_the_gate_refuses_everything_else(config: Path, request_: str | None) -> None:
    with pytest.raises(GateRefused, match=r"^refused: "):
        decide(request_, config, "dr")


def test_the_gate_refuses_a_connector_of_another_site(config: Path) -> None:
    with pytest.raises(GateRefused, match="does not ship to site 'elsewhere'"):
        decide("site-receive orders", config, "elsewhere")


@pytest.mark.parametrize(
    "path",
    ["", "/abs", "a//b", "a/./b", "../a", "a/..", "a/\0", ".tmp.x", "a/.tmp.y", "n" * 256],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(Refused):
        split_path(path)


def _serve(folder: ConnectorFolder, *frames: bytes) -> list[tuple[bytes, dict, bytes]]:  # type: ignore[type-arg]
    out = io.BytesIO()
    Server(folder).serve(io.BytesIO(b"".join(frames)), out)
    out.seek(0)
    replies = []
    while (reply := gp.read_frame(out, gp.MAX_HEADER, gp.MAX_READ)) is not None:
        replies.append(reply)
    return replies[1:]  # after "ready"


def _put(path: str, content: bytes) -> bytes:
    end = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    return (
        gp.frame(gp.PUT, {"path": path}) + gp.frame(gp.DATA, None, content) + gp.frame(gp.END, end)
    )


def test_a_put_links_a_new_file_and_never_replaces_one(tmp_path: Path) -> None:
    folder = ConnectorFolder(str(tmp_path), "main")
    try:
        replies = _serve(
            folder,
            gp.frame(gp.MKDIRS, {"path": "wal"}),
            _put("wal/a", b"first"),
            _put("wal/a", b"first"),
            _put("wal/a", b"second"),
        )
    finally:
        folder.close()
    assert [r[0] for r in replies] == [gp.OK, gp.OK, gp.OK, gp.ERROR]
    assert replies[1][1] == {"existed": False} and replies[2][1] == {"existed": True}
    assert "exists with different content" in replies[3][1]["error"]
    final = tmp_path / "main" / "wal" / "a"
    assert final.read_bytes() == b"first" and final.stat().st_mode & 0o777 == 0o400
    assert final.stat().st_nlink == 1 and os.listdir(final.parent) == ["a"]


def test_temps_are_swept_once_stale_and_never_a_final_file(tmp_path: Path) -> None:
    wal = tmp_path / "main" / "wal"
    wal.mkdir(parents=True)
    (wal / f".tmp.{'a' * 32}").write_bytes(b"x")
    (wal / f".tmp.{'b' * 32}").write_bytes(b"y")
    (wal / "kept").write_bytes(b"z")
    (wal / ".tmp.not-its-own").write_bytes(b"w")
    folder = ConnectorFolder(str(tmp_path), "main")
    try:
        # An upload in flight (touched just now) is left alone...
        assert folder.sweep_stale_temps() == 0
        # ...and ctime cannot be set back: look from the future for stale ones.
        assert folder.sweep_stale_temps(now=time.time() + 601) == 2
    finally:
        folder.close()
    assert sorted(os.listdir(wal)) == [".tmp.not-its-own", "kept"]
