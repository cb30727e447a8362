"""The SSH trust `check` and the daemon rely on, against a real sshd: known_hosts
markers (@revoked, @cert-authority) and the private key's mode."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

import paramiko
import pytest
from cli_run import check_lines, explain, logship

from logship.config.model import SiteConfig
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.errors import SafetyRefusal
from logship.ship.ssh_trust import hosts_match, read_known_hosts, refusal, refuse_unprotected_key

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

# -- known_hosts markers ------------------------------------------------------------------


def _other_key(directory: Path) -> str:
    """`algo blob` of a fresh key that is nobody's host key."""
    path = directory / "other_ed25519"
    path.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=60
    )
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def test_check_refuses_a_revoked_host_key(deployment: Deployment) -> None:
    dep = deployment
    plain = dep.sshd.known_hosts.read_text()
    revoked = "".join(
        f"@revoked * {dep.sshd.host_public_key(t)}\n" for t in dep.sshd.host_key_types
    )
    dep.sshd.known_hosts.write_text(plain + revoked)
    result = logship(dep.config_path, "check")
    assert result.returncode == 3, explain(result)
    line = check_lines(result)["ssh dr"]
    assert line.startswith("fail ") and "revoked" in line, explain(result)
    assert f"incoming {dep.connector}" not in check_lines(result)


def test_check_uses_the_host_key_that_is_not_revoked(deployment: Deployment) -> None:
    dep = deployment
    revoked = dep.sshd.host_key_types[0]  # the other type stays trusted
    plain = dep.sshd.known_hosts.read_text()
    dep.sshd.known_hosts.write_text(f"@revoked * {dep.sshd.host_public_key(revoked)}\n" + plain)
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    assert check_lines(result)["ssh dr"].startswith("ok "), explain(result)


def test_check_keeps_plain_lines_beside_revoked_and_ca_lines(deployment: Deployment) -> None:
    dep = deployment
    other = _other_key(dep.root)
    plain = dep.sshd.known_hosts.read_text()
    dep.sshd.known_hosts.write_text(
        f"# markers for other keys\n@revoked * {other}\n@cert-authority *.example {other}\n" + plain
    )
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    assert check_lines(result)["ssh dr"].startswith("ok "), explain(result)


def test_check_says_host_certificates_are_not_supported(deployment: Deployment) -> None:
    dep = deployment
    other = _other_key(dep.root)
    dep.sshd.known_hosts.write_text(f"@cert-authority [{dep.sshd.host}]:{dep.sshd.port} {other}\n")
    result = logship(dep.config_path, "check")
    assert result.returncode == 3, explain(result)
    line = check_lines(result)["ssh dr"]
    assert line.startswith("fail ") and "certificates are not supported" in line, explain(result)


# -- the private key's mode ---------------------------------------------------------------


def test_check_and_run_refuse_a_private_key_others_can_read(deployment: Deployment) -> None:
    dep = deployment
    dep.sshd.client_key.chmod(0o644)
    result = logship(dep.config_path, "check")
    assert result.returncode == 3, explain(result)
    line = check_lines(result)["ssh dr"]
    assert line.startswith("fail ") and "chmod 600" in line, explain(result)
    assert f"incoming {dep.connector}" not in check_lines(result)

    daemon = dep.start_daemon()
    code = wait_for(lambda: daemon.poll() is not None, 60, "the daemon to refuse to start")
    assert code and daemon.returncode == 3
    log = dep.daemon_log.read_text()
    assert "chmod 600" in log and str(dep.sshd.client_key) in log, log


# -- the pure parts -----------------------------------------------------------------------


def _site(tmp_path: Path, port: int = 2222) -> SiteConfig:
    return SiteConfig(
        name="dr",
        host="127.0.0.1",
        port=port,
        user="logship",
        identity_file=tmp_path / "id",
        known_hosts=tmp_path / "known_hosts",
        root=PurePosixPath("/srv/dr"),
    )


def test_host_patterns_are_literal_but_for_wildcards_and_negation() -> None:
    assert hosts_match("[127.0.0.1]:2222", "[127.0.0.1]:2222")
    assert not hosts_match("[127.0.0.1]:2222", "1")  # not a character class
    assert hosts_match("*.example,other", "dr.example")
    assert hosts_match("dr?.example", "dr1.example")
    assert not hosts_match("!dr.example,*.example", "dr.example")
    hashed = paramiko.HostKeys.hash_host("[127.0.0.1]:2222")
    assert hosts_match(hashed, "[127.0.0.1]:2222")
    assert not hosts_match(hashed, "[127.0.0.1]:2223")
    assert not hosts_match("|1|garbage", "x")


def test_known_hosts_drops_revoked_and_unreadable_lines(tmp_path: Path) -> None:
    good, bad = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    line = f"{good.get_name()} {good.get_base64()}"
    revoked = f"{bad.get_name()} {bad.get_base64()}"
    path = tmp_path / "known_hosts"
    path.write_text(
        f"# comment\n\n[127.0.0.1]:2222 {line}\n[127.0.0.1]:2222 {revoked}\n"
        f"@revoked other.example {revoked}\n@cert-authority *.example {line}\n"
        f"@unknown-marker * {line}\nnot a key line\nhost ssh-ed25519 !!notbase64!!\n"
    )
    known = read_known_hosts(path)
    assert [entry.key for entry in known.keys] == [good]  # revoked wherever listed
    assert known.is_revoked(bad) and not known.is_revoked(good)
    assert known.has_authority_for("dr.example")
    assert not known.has_authority_for("[127.0.0.1]:2222")


def test_refusals_name_the_reason(tmp_path: Path) -> None:
    site = _site(tmp_path)
    key, other = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()
    path = site.known_hosts
    path.write_text(f"@revoked * {key.get_name()} {key.get_base64()}\n")
    assert "@revoked" in str(refusal(site, read_known_hosts(path), key, listed=False))
    path.write_text(f"@cert-authority [127.0.0.1]:2222 {other.get_name()} {other.get_base64()}\n")
    line = str(refusal(site, read_known_hosts(path), key, listed=False))
    assert "host certificates are not supported" in line
    assert "does NOT match" in str(refusal(site, read_known_hosts(path), key, listed=True))
    path.write_text("")
    assert "is not in" in str(refusal(site, read_known_hosts(path), key, listed=False))


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    site = _site(tmp_path)
    refuse_unprotected_key(site)  # missing: reported where it is opened
    site.identity_file.write_text("key")
    for mode in (0o600, 0o400):
        site.identity_file.chmod(mode)
        refuse_unprotected_key(site)
    for mode in (0o644, 0o640, 0o604, 0o620):
        site.identity_file.chmod(mode)
        with pytest.raises(SafetyRefusal, match="chmod 600"):
            refuse_unprotected_key(site)
