"""The OS account a sandbox service runs as, and running commands as it.

PostgreSQL refuses to run as root, and sshd refuses to log in to locked accounts, so
when the test suite runs as root every service and every client process is switched to
an unprivileged account (normally ``postgres``) with ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Enough lines to show the actual error without flooding a test report.
TAIL_LINES = 20


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def is_root() -> bool:
    return os.geteuid() == 0


class CommandError(RuntimeError):
    """A command failed; the message names the command, its exit code and its stderr."""

    def __init__(
        self,
        cmd: Sequence[str],
        returncode: int | None,
        stderr: str = "",
        *,
        detail: str = "",
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with code {returncode}"
        parts = [f"command {subprocess.list2cmdline(self.cmd)} {status}"]
        if stderr.strip():
            parts.append(f"stderr (last lines):\n{tail(stderr)}")
        if detail.strip():
            parts.append(detail.rstrip())
        super().__init__("\n".join(parts))


def run_checked(
    cmd: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    detail: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (no shell), capturing output; raise :class:`CommandError` on failure.

    A timeout is always applied so that a wedged child fails the caller instead of
    hanging a test run forever.
    """
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise CommandError(cmd, None, stderr, detail=detail) from exc
    except FileNotFoundError as exc:
        raise CommandError(cmd, 127, str(exc), detail=detail) from exc
    if proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stderr, detail=detail)
    return proc


@dataclass(frozen=True)
class OsUser:
    """An OS account: sandbox services and their clients run as it."""

    name: str
    uid: int
    gid: int

    @classmethod
    def from_name(cls, name: str) -> OsUser:
        entry = pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    @classmethod
    def current(cls) -> OsUser:
        entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    @classmethod
    def for_postgres(cls) -> OsUser:
        """``postgres`` when we are root (PostgreSQL refuses root), else ourselves.

        A non-root process cannot switch users, so the current account is the only one
        it can run a cluster as.
        """
        if is_root():
            return cls.from_name("postgres")
        return cls.current()

    def command_prefix(self) -> list[str]:
        """The argv prefix that runs a command as this user (empty if already so)."""
        if is_root() and self.name != "root":
            return ["runuser", "-u", self.name, "--"]
        return []

    def run(
        self,
        cmd: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        detail: str = "",
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as this user; see :func:`run_checked`."""
        return run_checked(
            [*self.command_prefix(), *cmd], cwd=cwd, env=env, timeout=timeout, detail=detail
        )

    def chown(self, path: Path) -> None:
        """Give ``path`` to this user; only root can, and only root needs to."""
        if is_root():
            os.chown(path, self.uid, self.gid)

    def groups(self) -> set[int]:
        """Primary and supplementary group ids of this user."""
        return set(os.getgrouplist(self.name, self.gid))

    def _allowed(self, st: os.stat_result, want: int, groups: set[int]) -> bool:
        """Whether plain mode bits grant ``want`` (an ``R_OK|W_OK|X_OK`` mask).

        Like the kernel, only the first matching class (owner, group, other) counts:
        an owner denied by the owner bits is denied even if "other" would allow it.
        ACLs are not consulted; sandbox directories do not use them.
        """
        mode = st.st_mode
        if st.st_uid == self.uid:
            bits = (mode >> 6) & 0o7
        elif st.st_gid in groups:
            bits = (mode >> 3) & 0o7
        else:
            bits = mode & 0o7
        return bits & want == want

    def can_reach(self, path: Path) -> bool:
        """Whether this user can traverse every ancestor of ``path`` and read it.

        ``os.access`` answers for the calling process, which as root is always yes, so
        the ownership and mode of each ancestor are checked against this user instead.
        A directory also needs search permission to be of any use, so it is required.
        """
        if self.uid == 0:
            return Path(path).exists()
        try:
            target = Path(path).resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        groups = self.groups()
        for ancestor in reversed(target.parents):
            try:
                st = ancestor.stat()
            except OSError:
                return False
            if not self._allowed(st, os.X_OK, groups):
                return False
        try:
            st = target.stat()
        except OSError:
            return False
        want = os.R_OK | os.X_OK if stat.S_ISDIR(st.st_mode) else os.R_OK
        return self._allowed(st, want, groups)


def ensure_login_allowed(user: OsUser | str) -> bool:
    """Let sshd accept key logins for ``user`` if its account is locked.

    Debian creates ``postgres`` locked, and sshd refuses locked accounts even for
    public-key logins. ``usermod -p '*'`` sets an impossible password hash: the account
    stays without a usable password but sshd no longer sees it as locked. Only root can
    query or change another account, so this does nothing otherwise.

    Returns True if ``usermod`` was run.
    """
    name = user.name if isinstance(user, OsUser) else user
    if not is_root():
        return False
    # `passwd -S` reports "*" as locked too, but sshd only refuses a hash starting
    # with "!"; reading the hash avoids rewriting /etc/shadow on every start.
    with open("/etc/shadow") as shadow:
        hashes = dict(line.split(":", 2)[:2] for line in shadow if line.count(":") >= 2)
    if not hashes.get(name, "").startswith("!"):
        return False
    run_checked(["usermod", "-p", "*", name], timeout=30)
    return True
