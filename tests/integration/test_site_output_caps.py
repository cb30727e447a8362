"""Output read from the site over a real sshd is bounded: more than the caller
allows is one clear error, and memory stops growing at the cap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from sshd_site import running_sshd, site_section

from logship.config.load import load_config
from logship.config.model import SiteConfig
from logship.demo_sandbox import OsUser
from logship.ship.sftp import SftpTransport
from logship.ship.transport import ERROR_LIMIT, READ_LIMIT, SiteOutputTooLarge


@pytest.fixture
def site() -> Iterator[tuple[SiteConfig, Path]]:
    user = OsUser.for_postgres()
    with running_sshd("logship-caps-", user) as (base, sshd):
        incoming = base / "incoming"
        incoming.mkdir()
        user.chown(incoming)
        (base / "connectors").mkdir()
        config = base / "logship.toml"
        config.write_text(
            f"""[logship]
state_dir = "{base / "state"}"

{site_section(sshd, incoming)}"""
        )
        yield load_config(config).sites["dr"], incoming


def test_stdout_beyond_the_limit_is_a_clear_error(site: tuple[SiteConfig, Path]) -> None:
    config, _ = site
    transport = SftpTransport(config)
    try:
        with pytest.raises(SiteOutputTooLarge, match="printed more than 4096 bytes"):
            # Endless output: only the cap ends the read, not the command.
            transport.run_command(["sh", "-c", "yes hostile"], timeout=30, limit=4096)
        # Within the limit, and the connection still serves.
        status, out, _ = transport.run_command(["echo", "fine"], timeout=30, limit=4096)
        assert (status, out) == (0, b"fine\n")
    finally:
        transport.close()


def test_stderr_is_cut_not_grown(site: tuple[SiteConfig, Path]) -> None:
    config, _ = site
    transport = SftpTransport(config)
    try:
        # Much more than the SSH window on stderr, then a result on stdout.
        flood = "head -c 8000000 /dev/zero >&2; echo done"
        status, out, err = transport.run_command(["sh", "-c", flood], timeout=30)
        assert (status, out, len(err)) == (0, b"done\n", ERROR_LIMIT)
        with pytest.raises(SiteOutputTooLarge, match="on stderr"):
            transport.run_command(["sh", "-c", "yes noise >&2"], timeout=30)
    finally:
        transport.close()


def test_a_huge_file_read_back_whole_is_refused(site: tuple[SiteConfig, Path]) -> None:
    config, incoming = site
    big = incoming / "record.json"
    big.write_bytes(b" " * (READ_LIMIT + 1))
    transport = SftpTransport(config)
    try:
        with pytest.raises(SiteOutputTooLarge, match="larger than"):
            transport.read_bytes(PurePosixPath(big))
        big.write_bytes(b"{}")
        assert transport.read_bytes(PurePosixPath(big)) == b"{}"
    finally:
        transport.close()


def test_floods_cut_at_the_cap_again_and_again_leave_the_connection_serving(
    site: tuple[SiteConfig, Path],
) -> None:
    # Each cut closes a channel while the site still pours data into it: the
    # connection's reader must never trip over the closed channel.
    config, _ = site
    transport = SftpTransport(config)
    try:
        for _ in range(40):
            with pytest.raises(SiteOutputTooLarge):
                transport.run_command(["sh", "-c", "yes hostile"], timeout=30, limit=4096)
        for _ in range(4):
            with pytest.raises(SiteOutputTooLarge, match="on stderr"):
                transport.run_command(["sh", "-c", "yes noise >&2"], timeout=30)
        status, out, _ = transport.run_command(["echo", "fine"], timeout=30, limit=4096)
        assert (status, out) == (0, b"fine\n")
        assert transport.is_alive
    finally:
        transport.close()
