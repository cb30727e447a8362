"""logship's CLI run as a child process, as an operator runs it, and `check`'s
plain output read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def without_config_env() -> dict[str, str]:
    """This environment less LOGSHIP_CONFIG: the test's --config alone decides."""
    return {k: v for k, v in os.environ.items() if k != "LOGSHIP_CONFIG"}


def logship(
    config: Path,
    *args: str,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    umask: int = -1,
) -> subprocess.CompletedProcess[str]:
    """`logship --config CONFIG ARGS...` with no stdin; output captured as text.
    `env` defaults to `without_config_env()`; `umask` -1 keeps this process's."""
    return subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=without_config_env() if env is None else env,
        cwd=cwd,
        umask=umask,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def check_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check's plain output: {"<check name>": "<status> <detail>"}."""
    lines = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition(" ")
        name, sep, detail = rest.strip().partition(": ")
        if sep and status in ("ok", "warn", "fail"):
            lines[name] = f"{status} {detail}"
    return lines


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
