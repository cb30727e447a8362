"""`check` against a real sshd: the site's logship command, known_hosts markers and the
private key's mode, each as the daemon would meet them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import check_lines, explain, logship

from logship import __version__
from logship.demo_sandbox.deployment import Deployment

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

REPO = Path(__file__).resolve().parents[2]


def _set_site_command(dep: Deployment, command: str | None) -> None:
    """Rewrite `[sites.dr] command` (TOML text), or drop it for the default."""
    text = dep.config_path.read_text()
    replacement = f"command = {command}\n" if command is not None else ""
    new, count = re.subn(r"^command = .*\n", replacement, text, flags=re.M)
    assert count == 1
    dep.config_path.write_text(new)


# -- the site's logship (finding 8) ------------------------------------------------------


def test_version_flag_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "logship", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, explain(result)
    assert result.stdout.strip() == f"logship {__version__}"


def test_check_shows_the_site_logship_and_its_standby_status(deployment: Deployment) -> None:
    dep = deployment
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    lines = check_lines(result)
    assert lines["site-logship dr"].startswith("ok "), explain(result)
    assert f"logship {__version__}" in lines["site-logship dr"]
    # logship answers there; the standby itself is not restored yet, which is said.
    status = lines[f"standby-status {dep.connector}"]
    assert status.startswith(("ok ", "warn ")), explain(result)
    assert "answers" in status


def test_check_fails_without_a_site_command(deployment: Deployment) -> None:
    dep = deployment
    _set_site_command(dep, None)  # the default, plain `logship`, is not on the site's PATH
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    line = check_lines(result)["site-logship dr"]
    assert line.startswith("fail "), explain(result)
    assert "[sites.dr] command" in line
    failed = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert len(failed) == 1, explain(result)  # one clear line, not one per connector


def test_check_fails_when_the_site_command_does_not_exist(deployment: Deployment) -> None:
    dep = deployment
    _set_site_command(dep, '["/nonexistent/bin/logship", "--config", "/etc/logship.toml"]')
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    line = check_lines(result)["site-logship dr"]
    assert line.startswith("fail "), explain(result)
    assert "/nonexistent/bin/logship" in line and "[sites.dr] command" in line


def test_check_fails_when_the_site_logship_cannot_answer_standby_status(
    deployment: Deployment,
) -> None:
    dep = deployment
    # The right program with a config that does not exist there: --version still works.
    command = f'["{sys.executable}", "-m", "logship", "--config", "/nonexistent/logship.toml"]'
    _set_site_command(dep, command)
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    lines = check_lines(result)
    assert lines["site-logship dr"].startswith("ok "), explain(result)
    status = lines[f"standby-status {dep.connector}"]
    assert status.startswith("fail ") and "standby status" in status, explain(result)


def test_check_fails_when_the_site_command_is_not_logship(deployment: Deployment) -> None:
    dep = deployment
    _set_site_command(dep, '["/bin/echo", "hello"]')
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    assert check_lines(result)["site-logship dr"].startswith("fail "), explain(result)


def test_check_only_warns_for_a_files_connector_without_logship_at_the_site(
    deployment: Deployment,
) -> None:
    dep = deployment
    source = dep.root / "src"
    source.mkdir()
    (dep.config_dir / "connectors" / "mirror.toml").write_text(
        f'kind = "files"\nsite = "dr"\nrpo = "60s"\nsource = "{source}"\n\n'
        f'[standby]\ntarget = "{dep.root / "standby-site" / "mirror"}"\n'
    )
    _set_site_command(dep, '["/nonexistent/bin/logship"]')
    # Only the mirror uses the site: tree-receive is missed, which costs speed only.
    result = logship(dep.config_path, "check", "mirror")
    assert result.returncode == 0, explain(result)
    line = check_lines(result)["site-logship dr"]
    assert line.startswith("warn ") and "per-file SFTP" in line, explain(result)
    # With the database connector too, the same command fails the check.
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    assert check_lines(result)["site-logship dr"].startswith("fail "), explain(result)


def test_check_warns_when_the_site_runs_another_version(deployment: Deployment) -> None:
    dep = deployment
    # A stand-in that answers --version like logship 9.9 (and nothing else).
    _set_site_command(dep, '["sh", "-c", "echo logship 9.9", "sh"]')
    result = logship(dep.config_path, "check")
    line = check_lines(result)["site-logship dr"]
    assert line.startswith("warn ") and "logship 9.9" in line, explain(result)
    assert f"this primary runs {__version__}" in line


def test_check_reads_a_running_standby_through_the_site_logship(deployment: Deployment) -> None:
    dep = deployment
    dep.standby_up()
    result = logship(dep.config_path, "check", dep.connector)
    assert result.returncode == 0, explain(result)
    status = check_lines(result)[f"standby-status {dep.connector}"]
    assert status.startswith("ok ") and "in recovery: True" in status, explain(result)
