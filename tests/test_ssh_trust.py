"""The SSH trust `check` and the daemon rely on, against a real sshd: known_hosts
markers (@revoked, @cert-authority) and the private key's mode."""

from __future__ import annotations

import subprocess
from pathlib import Path

from test_check_site import _explain, _lines, logship

from logship.sandbox.deployment import Deployment, wait_for

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
    assert result.returncode == 3, _explain(result)
    line = _lines(result)["ssh dr"]
    assert line.startswith("fail ") and "revoked" in line, _explain(result)
    assert f"incoming {dep.connector}" not in _lines(result)


def test_check_keeps_plain_lines_beside_revoked_and_ca_lines(deployment: Deployment) -> None:
    dep = deployment
    other = _other_key(dep.root)
    plain = dep.sshd.known_hosts.read_text()
    dep.sshd.known_hosts.write_text(
        f"# markers for other keys\n@revoked * {other}\n@cert-authority *.example {other}\n" + plain
    )
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, _explain(result)
    assert _lines(result)["ssh dr"].startswith("ok "), _explain(result)


def test_check_says_host_certificates_are_not_supported(deployment: Deployment) -> None:
    dep = deployment
    other = _other_key(dep.root)
    dep.sshd.known_hosts.write_text(f"@cert-authority [{dep.sshd.host}]:{dep.sshd.port} {other}\n")
    result = logship(dep.config_path, "check")
    assert result.returncode == 3, _explain(result)
    line = _lines(result)["ssh dr"]
    assert line.startswith("fail ") and "certificates are not supported" in line, _explain(result)


# -- the private key's mode ---------------------------------------------------------------


def test_check_and_run_refuse_a_private_key_others_can_read(deployment: Deployment) -> None:
    dep = deployment
    dep.sshd.client_key.chmod(0o644)
    result = logship(dep.config_path, "check")
    assert result.returncode == 3, _explain(result)
    line = _lines(result)["ssh dr"]
    assert line.startswith("fail ") and "chmod 600" in line, _explain(result)
    assert f"incoming {dep.connector}" not in _lines(result)

    daemon = dep.start_daemon()
    code = wait_for(lambda: daemon.poll() is not None, 60, "the daemon to refuse to start")
    assert code and daemon.returncode == 3
    log = dep.daemon_log.read_text()
    assert "chmod 600" in log and str(dep.sshd.client_key) in log, log
