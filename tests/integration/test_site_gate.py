"""A restricted shipping key (real sshd, `restrict,command="... site-gate"` in
authorized_keys, real files): the primary ships through it, and with that same
key nothing already at the site can be removed, overwritten, renamed over,
truncated or chmodded, and nothing appears outside the connector's folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import socket
import stat
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
import pytest
from sshd_site import running_sshd, site_config, site_section

from logship.config.model import SiteConfig
from logship.demo_sandbox import OsUser
from logship.demo_sandbox.sshd import SshServer
from logship.manifest import SiteLayout
from logship.ship.gated import GatedTransport, RestrictedError, SiteRefused
from logship.ship.shipper import ship_file
from logship.site import gate_protocol as gp
from logship.spool import entry_for

SEGMENT = "000000010000000000000007"
MIB = 1024 * 1024


@dataclass
class Gated:
    base: Path
    incoming: Path
    outside: Path
    config_path: Path
    sshd: SshServer
    site: SiteConfig
    layout: SiteLayout
    user: OsUser


def _logship_argv(config: Path) -> list[str]:
    # The installed console script: no `python -m` (whose import path starts
    # in the working directory, the login user's home under sshd).
    return [str(Path(sys.executable).parent / "logship"), "--config", str(config)]


def _write_config(base: Path, sshd: SshServer, incoming: Path, user: OsUser) -> Path:
    config = base / "config"
    (config / "connectors").mkdir(parents=True)
    path = config / "logship.toml"
    path.write_text(
        f"""[logship]
state_dir = "{base / "state"}"

{site_section(sshd, incoming)}restricted = true

[sites.other]
host = "{sshd.host}"
user = "{user.name}"
identity_file = "{sshd.client_key}"
known_hosts = "{sshd.known_hosts}"
root = "{base / "other"}"
"""
    )
    for name, site in (("main", "dr"), ("elsewhere", "other")):
        (config / "connectors" / f"{name}.toml").write_text(
            f"""kind = "postgresql"
site = "{site}"
rpo = "60s"
[primary]
dsn = "host=127.0.0.1 port=1"
[standby]
dsn = "host=127.0.0.1 port=1 connect_timeout=2"
data_dir = "{base / "standby"}"
"""
        )
    for p in (config, config / "connectors"):
        p.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def gated() -> Iterator[Gated]:
    user = OsUser.for_postgres()
    with running_sshd("logship-gate-", user) as (base, sshd):
        incoming = base / "incoming"
        outside = base / "outside"
        for folder in (incoming, outside):
            folder.mkdir(mode=0o700)
            user.chown(folder)
        (outside / "secret").write_bytes(b"not for the primary\n")
        user.chown(outside / "secret")
        config_path = _write_config(base, sshd, incoming, user)
        command = _logship_argv(config_path)
        sshd.restrict_client_key(shlex.join([*command, "site-gate", "--site", "dr"]))
        site = site_config(sshd, incoming, command=command, restricted=True)
        layout = SiteLayout.for_connector(site.root, "main")
        yield Gated(base, incoming, outside, config_path, sshd, site, layout, user)


# -- helpers ---------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `roots`: its mode, inode, and content's sha256 (files) or
    target (links). A removal, overwrite, rename over, truncate or chmod shows."""
    seen: dict[str, tuple[Any, ...]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files, ""]:
                path = os.path.join(folder, name) if name else folder
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    what: Any = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                elif stat.S_ISLNK(info.st_mode):
                    what = os.readlink(path)
                else:
                    what = None
                seen[path] = (info.st_mode, info.st_ino, info.st_nlink, info.st_size, what)
    return seen


def _client(site: SiteConfig) -> paramiko.SSHClient:
    from logship.ship.sftp import open_client

    return open_client(site)


def _exec(client: paramiko.SSHClient, command: str, timeout: float = 60) -> tuple[int, str, str]:
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out, err = stdout.read(), stderr.read()
    return stdout.channel.recv_exit_status(), out.decode(errors="replace"), err.decode()


class RawReceive:
    """A `site-receive` channel driven by hand, frame by frame."""

    def __init__(self, client: paramiko.SSHClient, command: str = "site-receive main") -> None:
        transport = client.get_transport()
        assert transport is not None
        self.channel = transport.open_session()
        self.channel.settimeout(60)
        self.channel.exec_command(command)
        self.replies = self.channel.makefile("rb")
        assert self.reply() == (gp.OK, {"ready": True}, b"")

    def send(self, raw: bytes) -> None:
        self.channel.sendall(raw)

    def reply(self) -> tuple[bytes, dict[str, Any], bytes] | None:
        return gp.read_frame(self.replies, gp.MAX_HEADER, gp.MAX_READ)

    def ask(self, kind: bytes, header: dict[str, Any], data: bytes = b"") -> tuple[Any, ...]:
        self.send(gp.frame(kind, header, data))
        answer = self.reply()
        assert answer is not None
        return answer

    def put(self, path: str, content: bytes, sha256: str | None = None) -> tuple[Any, ...]:
        self.send(gp.frame(gp.PUT, {"path": path}))
        self.send(gp.frame(gp.DATA, None, content))
        digest = sha256 or hashlib.sha256(content).hexdigest()
        return self.ask(gp.END, {"size": len(content), "sha256": digest})

    def close(self) -> int:
        self.channel.shutdown_write()
        status = self.channel.recv_exit_status()
        self.channel.close()
        return status


# -- (a) the primary ships through the gate ---------------------------------------


def test_a_restricted_primary_ships_reads_lists_and_appends(gated: Gated, tmp_path: Path) -> None:
    layout = gated.layout
    transport = GatedTransport(gated.site)
    try:
        transport.makedirs(layout.wal_dir)
        transport.makedirs(layout.manifest_dir)
        assert stat.S_ISDIR(transport.stat_mode(layout.wal_dir) or 0)
        # A whole segment, in the shipper's own way (compressed, then its record).
        content = os.urandom(4 * MIB) + bytes(12 * MIB)
        (tmp_path / SEGMENT).write_bytes(content)
        entry = entry_for("main", tmp_path / SEGMENT)
        assert entry is not None
        record = ship_file(transport, layout, entry, "zstd", lambda: 1.0)
        stored = Path(layout.stored_wal(SEGMENT, "zstd"))
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == record.stored_sha256
        assert (
            transport.read_bytes(layout.record_path(SEGMENT))
            == Path(layout.record_path(SEGMENT)).read_bytes()
        )
        # Shipping it again (a retry after a lost reply) is a success, changing nothing.
        before = snapshot(gated.incoming)
        assert ship_file(transport, layout, entry, "zstd", lambda: 2.0) == record
        assert snapshot(gated.incoming) == before
        # Final files are read-only, folders private, no temp is left.
        assert stat.S_IMODE(stored.stat().st_mode) == 0o400
        assert stat.S_IMODE(Path(layout.wal_dir).stat().st_mode) == 0o700
        assert transport.listdir(layout.wal_dir) == [stored.name]
        many = Path(layout.root) / "many"  # more names than a frame header holds
        many.mkdir()
        for index in range(5000):
            (many / f"{index:024X}").touch()
        assert len(transport.listdir(layout.root / "many")) == 5000
        assert os.listdir(layout.wal_dir) == [stored.name]
        assert transport.read_bytes(layout.wal_dir / "absent") is None
        assert transport.listdir(layout.root / "absent") == []
        assert transport.stat_mode(layout.root / "absent") is None
        # An append-only log: appended, never rewritten.
        transport.append_durably(layout.generations_log, b"one\n")
        transport.append_durably(layout.generations_log, b"two\n")
        assert transport.read_bytes(layout.generations_log) == b"one\ntwo\n"
        free = transport.free_bytes(layout.wal_dir)
        assert free is not None and free > 0
        # What restricted mode takes away says so.
        with pytest.raises(RestrictedError, match="retention runs at the site"):
            transport.remove(stored_path := layout.stored_wal(SEGMENT, "zstd"))
        with pytest.raises(RestrictedError):
            transport.rmdir(layout.wal_dir)
        with pytest.raises(SiteRefused, match="exists with different content"):
            transport.put_atomic(stored_path, [b"other content"])
        assert Path(stored_path).read_bytes() == stored.read_bytes()
        # The site commands the gate lets through, with the site's own config.
        code, out, err = transport.run_command([*gated.site.command, "--version"], 30)
        assert code == 0 and out.startswith(b"logship "), err
        code, out, err = transport.run_command(
            [*gated.site.command, "standby", "status", "main", "--json"], 60
        )
        assert b"refused" not in err and out.startswith(b"{"), (code, out, err)
        code, out, err = transport.run_command(
            [*gated.site.command, "drill", "main", "--backup", "latest", "--json"], 120
        )
        assert b"refused:" not in err, (code, out, err)  # through the gate; no backup yet
        with pytest.raises(RestrictedError):
            transport.run_command(["sync", "-f", str(gated.incoming)], 30)
    finally:
        transport.close()


def test_check_reaches_a_restricted_site_and_leaves_nothing(gated: Gated) -> None:
    from logship.checks import CheckRunner, CheckStatus, run_setup_checks
    from logship.config.load import load_config

    _ship_one(gated)
    before = snapshot(gated.incoming)
    runner = CheckRunner()
    run_setup_checks(load_config(gated.config_path), ["main"], runner)
    results = {r.name: r for r in runner.results}
    for name in ("ssh dr", "site-root dr", "not-promoted main", "incoming main"):
        assert results[name].status is CheckStatus.OK, results[name]
    assert "site-gate" in results["ssh dr"].detail
    assert snapshot(gated.incoming) == before  # no probe left behind


# -- (b) the attack script --------------------------------------------------------

SFTP_ATTACKS = [
    ("remove", lambda s, p: s.remove(p)),
    ("rename", lambda s, p: s.rename(p, p + ".x")),
    ("posix_rename", lambda s, p: s.posix_rename(p + ".x", p)),
    ("open_w", lambda s, p: s.open(p, "w").write(b"x")),
    ("open_a", lambda s, p: s.open(p, "a").write(b"x")),
    ("truncate", lambda s, p: s.truncate(p, 0)),
    ("chmod", lambda s, p: s.chmod(p, 0o666)),
    ("utime", lambda s, p: s.utime(p, (0, 0))),
    ("symlink", lambda s, p: s.symlink("/etc/passwd", p + ".l")),
    ("mkdir", lambda s, p: s.mkdir(p + ".d")),
    ("rmdir", lambda s, p: s.rmdir(str(PurePosixPath(p).parent))),
    ("listdir", lambda s, p: s.listdir(str(PurePosixPath(p).parent))),
]


def test_no_sftp_request_gets_through(gated: Gated) -> None:
    target = _ship_one(gated)
    before = snapshot(gated.base / "incoming", gated.outside)
    client = _client(gated.site)
    try:
        for name, attack in SFTP_ATTACKS:
            with pytest.raises((paramiko.SSHException, EOFError, OSError)):
                attack(client.open_sftp(), str(target))
            assert client.get_transport().is_active(), name  # type: ignore[union-attr]
        # Raw SFTP packets on a subsystem channel reach the gate, which reads none.
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.settimeout(30)
        channel.invoke_subsystem("sftp")
        init = struct.pack(">IBI", 5, 1, 3)
        remove = _sftp_packet(13, 2, str(target).encode())
        with_hardlink = _sftp_packet(200, 3, b"hardlink@openssh.com", str(target).encode())
        channel.sendall(init + remove + with_hardlink)
        # (sshd keeps a subsystem's stderr to itself: the exit status tells.)
        assert channel.recv_exit_status() == 3
    finally:
        client.close()
    assert snapshot(gated.base / "incoming", gated.outside) == before


def _sftp_packet(kind: int, request_id: int, *fields: bytes) -> bytes:
    body = struct.pack(">BI", kind, request_id) + b"".join(
        struct.pack(">I", len(f)) + f for f in fields
    )
    return struct.pack(">I", len(body)) + body


def _ship_one(gated: Gated) -> Path:
    """A shipped segment (and its record) to attack; shipped once per module."""
    target = Path(gated.layout.stored_wal(SEGMENT, "none"))
    if target.exists():
        return target
    transport = GatedTransport(gated.site)
    try:
        transport.makedirs(gated.layout.wal_dir)
        transport.makedirs(gated.layout.manifest_dir)
        transport.put_atomic(PurePosixPath(target), [b"shipped WAL " * 1000])
    finally:
        transport.close()
    return target


def _shell_attacks(gated: Gated) -> list[str]:
    incoming, pwned = gated.incoming, gated.base / "pwned"
    wal = gated.layout.wal_dir
    return [
        "",
        f"rm -rf {incoming}",
        f"sh -c 'rm -rf {incoming}'",
        f"/bin/sh -c 'touch {pwned}'",
        "bash -i",
        f"touch {pwned}",
        "site-receive ../x",
        "site-receive /tmp",
        "site-receive main extra",
        "site-receive elsewhere",
        "site-receive main; rm -rf x",
        f"standby status main; rm -rf {incoming}",
        f"standby status main && touch {pwned}",
        f"standby status main || touch {pwned}",
        f"standby status main | tee {pwned}",
        f"standby status main > {pwned}",
        f"standby status `touch {pwned}`",
        f"standby status $(touch {pwned})",
        f"standby status main\ntouch {pwned}",
        "standby status main --config /tmp/evil.toml",
        "--config /tmp/evil.toml standby status main",
        "standby status main --json --json",
        "standby restore main",
        "sftp",
        "internal-sftp",
        "/usr/lib/openssh/sftp-server",
        "/usr/lib/openssh/sftp-server -P remove",
        f"scp -t {wal}",
        f"rsync --server -e.Lsfx . {wal}",
        "tree-receive main",
        "tree-digest main",
        "retention main",
        "promote main --force",
        "run",
        "site-gate --site dr",
        "drill main --backup ../../x",
        "drill main --debug",
        "--debug standby status main",
        "python3 -c 'import os'",
        f"{sys.executable} -m logship standby status main",
        "logship standby status main",
        "x" * 5000,
    ]


def test_no_shell_trick_gets_through(gated: Gated) -> None:
    _ship_one(gated)
    before = snapshot(gated.base / "incoming", gated.outside)
    names_before = sorted(os.listdir(gated.base))
    client = _client(gated.site)
    try:
        for command in _shell_attacks(gated):
            code, out, err = _exec(client, command)
            assert code == 3, (command, code, out, err)
            assert err.count("\n") == 1 and "refused" in err, (command, err)
        # An interactive shell is the forced command too, with no request: refused.
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.settimeout(30)
        channel.invoke_shell()
        channel.sendall(f"rm -rf {gated.incoming}\n".encode())
        assert channel.recv_exit_status() == 3
        # `restrict`: no pty, no port forwarding either way, no agent.
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        with pytest.raises(paramiko.SSHException):
            channel.get_pty()
        with pytest.raises(paramiko.ChannelException):
            client.get_transport().open_channel(  # type: ignore[union-attr]
                "direct-tcpip", (gated.sshd.host, gated.sshd.port), ("127.0.0.1", 0)
            )
        with pytest.raises(paramiko.SSHException):
            client.get_transport().request_port_forward("127.0.0.1", 0)  # type: ignore[union-attr]
        # An environment the client sends (LD_PRELOAD) never reaches the gate.
        channel = client.get_transport().open_session()  # type: ignore[union-attr]
        channel.settimeout(30)
        channel.update_environment({"LD_PRELOAD": "/nonexistent/evil.so", "LOGSHIP_X": "1"})
        channel.exec_command("--version")
        assert channel.recv_exit_status() == 0
        assert b"ld.so" not in channel.recv_stderr(4096)
    finally:
        client.close()
    assert snapshot(gated.base / "incoming", gated.outside) == before
    assert sorted(os.listdir(gated.base)) == names_before


def test_no_site_receive_request_abuse_gets_through(gated: Gated) -> None:
    target = _ship_one(gated)
    main = gated.incoming / "main"
    # What a local user (or an earlier attacker) could plant at the site.
    (main / "evil").symlink_to(gated.outside)
    (main / "wal" / "000000010000000000000099").symlink_to(gated.outside / "secret")
    (main / "generations.jsonl").unlink(missing_ok=True)
    (main / "generations.jsonl").symlink_to(gated.outside / "secret")
    before = snapshot(gated.base / "incoming", gated.outside)
    names_before = sorted(os.listdir(gated.base))
    relative = f"wal/{target.name}"
    client = _client(gated.site)
    try:
        raw = RawReceive(client)
        refused: list[tuple[str, tuple[Any, ...]]] = [
            ("overwrite", raw.put(relative, b"ransom")),
            ("overwrite empty", raw.put(relative, b"")),
            ("dotdot", raw.put("../outside/x", b"x")),
            ("dotdot inner", raw.put("wal/../../x", b"x")),
            ("absolute", raw.put(f"{gated.outside}/x", b"x")),
            ("empty", raw.put("", b"x")),
            ("dot", raw.put("wal/./x", b"x")),
            ("temp name", raw.put("wal/.tmp.x", b"x")),
            ("nul", raw.put("wal/a\0b", b"x")),
            ("overlong", raw.put("wal/" + "a" * 300, b"x")),
            ("deep", raw.put("/".join(["d"] * 40), b"x")),
            ("through a planted folder link", raw.put("evil/x", b"x")),
            ("onto a planted file link", raw.put("wal/000000010000000000000099", b"x")),
            ("wrong sha", raw.put("wal/new", b"x", sha256="0" * 64)),
            ("a forged promote marker", raw.put("PROMOTED", b"x")),
            ("a forged progress", raw.put("restored.json", b"{}")),
            ("a forged refusal", raw.put("refused/000000010000000000000001.json", b"{}")),
            ("a forged drill result", raw.put("drills/x.json", b"{}")),
            ("into a drill's scratch copy", raw.ask(gp.MKDIRS, {"path": "drill/pgdata"})),
            ("mkdir through a link", raw.ask(gp.MKDIRS, {"path": "evil/sub"})),
            ("append to WAL", raw.ask(gp.APPEND, {"path": relative}, b"x")),
            ("append elsewhere", raw.ask(gp.APPEND, {"path": "../outside/secret"}, b"x")),
            ("append through a link", raw.ask(gp.APPEND, {"path": "generations.jsonl"}, b"x")),
            ("read through a link", raw.ask(gp.READ, {"path": "wal/000000010000000000000099"})),
            ("read outside", raw.ask(gp.READ, {"path": "../outside/secret"})),
            ("list outside", raw.ask(gp.LISTDIR, {"path": "evil"})),
            ("path not a string", raw.ask(gp.STAT, {"path": ["wal"]})),
        ]
        for what, answer in refused:
            assert answer[0] == gp.ERROR, (what, answer)
        assert raw.close() == 0
        # A broken stream ends the server with one line, not a traceback.
        for garbage in (
            b"P" + struct.pack(">II", 2**31, 0),  # a huge header
            gp.frame(gp.DATA, None, b"x"),  # DATA with no PUT
            b"Z" + struct.pack(">II", 0, 0),  # no such request
            b"R" + struct.pack(">II", 3, 0) + b"[[[",  # not JSON
            b"R" + struct.pack(">II", 20000, 0) + b"[" * 20000,  # nested deep
            gp.frame(gp.READ, {"path": "wal"}, b"data"),  # data where none goes
            os.urandom(4096),
        ):
            raw = RawReceive(client)
            raw.send(garbage)
            with contextlib.suppress(OSError, socket.timeout):
                raw.channel.shutdown_write()
            assert raw.channel.recv_exit_status() == 1
            err = raw.channel.recv_stderr(65536).decode()
            assert err.count("\n") == 1 and "protocol error" in err, err
        # A PUT cut short (the link goes mid-file) leaves no temp behind.
        raw = RawReceive(client)
        raw.send(gp.frame(gp.PUT, {"path": "wal/cut"}) + gp.frame(gp.DATA, None, b"x" * 1000))
        assert raw.close() == 0
    finally:
        client.close()
    assert snapshot(gated.base / "incoming", gated.outside) == before
    assert sorted(os.listdir(gated.base)) == names_before
