"""`site-gate`: what a restricted shipping key may run at the site, and nothing else.

Installed as the key's OpenSSH forced command, e.g. in authorized_keys:

    restrict,command="/usr/bin/logship --config /etc/logship/logship.toml
    site-gate --site dr" ssh-ed25519 AAAA...   (all on one line)

sshd then runs it for every session of that key, whatever the client asked
for, and puts the request in SSH_ORIGINAL_COMMAND (for the SFTP subsystem:
"sftp"). The request is only ever parsed here, never given to a shell; the
verb runs in this process with the site's own config, never the client's
options. An interactive shell, SFTP, shell syntax, any other verb or option
is refused with one line and exit 3.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from logship.config.files import connector_name, read_all
from logship.errors import SafetyRefusal

#: the characters an allowed request can hold; a quote, `;`, `$`, a backtick,
#: `|`, `&`, a redirection or a newline is refused before anything is parsed
_SAFE = re.compile(r"[A-Za-z0-9_.:+ -]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_BACKUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
MAX_REQUEST = 1024


class GateRefused(SafetyRefusal):
    """A request the restricted key may not make."""


def _connector_site(config: Path, connector: str) -> str | None:
    """The site the connector ships to in the site's own config (None: unknown)."""
    raw = read_all(config)
    for cpath, table in raw.connectors:
        if connector_name(cpath, table) == connector:
            site = table.get("site")
            return site if isinstance(site, str) else None
    return None


def _connector(config: Path, site: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise GateRefused(f"refused: {name!r} is not a connector name")
    if _connector_site(config, name) != site:
        raise GateRefused(f"refused: connector {name!r} does not ship to site {site!r} here")
    return name


def _flags(words: list[str], allowed: dict[str, bool]) -> dict[str, Any]:
    """Options from `allowed` (name -> takes a value), each at most once; rest: refused."""
    found: dict[str, Any] = {}
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word not in allowed or word in found:
            raise GateRefused(f"refused: unexpected argument {word!r}")
        if allowed[word]:
            if not rest:
                raise GateRefused(f"refused: {word} needs a value")
            found[word] = rest.pop(0)
        else:
            found[word] = True
    return found


def decide(request: str | None, config: Path, site: str) -> list[str]:
    """The logship arguments (after `--config`) the request may run; GateRefused if none."""
    if request is None or not request.strip():
        raise GateRefused("refused: no interactive shell for this key")
    if len(request) > MAX_REQUEST or not _SAFE.fullmatch(request):
        raise GateRefused("refused: the command holds characters no logship site command uses")
    words = shlex.split(request)
    verb = words[0]
    if words == ["--version"]:
        return ["--version"]
    if verb == "site-receive" and len(words) == 2:
        return ["site-receive", _connector(config, site, words[1])]
    if words[:2] == ["standby", "status"] and len(words) > 2:
        names = [w for w in words[2:] if not w.startswith("-")]
        if len(names) != 1:
            raise GateRefused("refused: standby status takes one connector")
        options = _flags([w for w in words[2:] if w.startswith("-")], {"--json": False})
        return ["standby", "status", _connector(config, site, names[0]), *options]
    if words[:2] == ["standby", "stream-check"] and len(words) == 3:
        return ["standby", "stream-check", _connector(config, site, words[2])]
    if verb == "drill" and len(words) >= 2:
        connector = _connector(config, site, words[1])
        options = _flags(
            words[2:], {"--backup": True, "--json": False, "--stop-when-stdin-closes": False}
        )
        backup = options.pop("--backup", None)
        argv = ["drill", connector, *options]
        if backup is not None:
            if not _BACKUP.fullmatch(backup):
                raise GateRefused(f"refused: {backup!r} is not a backup id")
            argv += ["--backup", backup]
        return argv
    raise GateRefused(f"refused: {verb!r} is not a command this key may run")
