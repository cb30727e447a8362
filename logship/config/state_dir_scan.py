"""`[logship] state_dir` found without a TOML parser, for archive-wal's confirmation.

Importing tomllib (with `re`, `typing` and `string`) costs more than the rest of a
confirmed archive-wal call. This reads only the plainest way to write the key,
`state_dir = "PATH"` under `[logship]`, and gives up (None) on anything else;
the caller then takes the full path, which parses the file properly. Giving up is
always safe: it only means copying a segment that could have been confirmed.
"""

from __future__ import annotations

import os

DEFAULT_CONFIG = "logship.toml"
CONFIG_ENV = "LOGSHIP_CONFIG"


def config_file(explicit: str | None) -> str:
    """As logship.config.files.config_path: `--config`, $LOGSHIP_CONFIG, ./logship.toml."""
    raw = explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    return os.path.abspath(os.path.expanduser(raw))


def _plain_string(value: str) -> str | None:
    """The text of `"..."` (a comment may follow), when it has no escape in it."""
    if not value.startswith('"'):
        return None
    end = value.find('"', 1)
    if end < 1:
        return None
    text, rest = value[1:end], value[end + 1 :].strip()
    if "\\" in text or (rest and not rest.startswith("#")):
        return None
    return text


def state_dir(config: str) -> str | None:
    """The state_dir `config` names, resolved as the full parser would; None: ask it."""
    try:
        with open(config, encoding="utf-8") as source:
            text = source.read()
    except (OSError, UnicodeDecodeError):
        return None
    if '"""' in text or "'''" in text:
        return None  # a multi-line string could hold lines that look like keys
    table = ""
    found: list[str | None] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            table = line.split("#", 1)[0].strip()
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            continue
        if "state_dir" in key and (table, key) != ("[logship]", "state_dir"):
            if "logship" in key or table.startswith(("[logship", "[sites", "[[sites")):
                # A dotted or quoted spelling, or a site's own state_dir (which
                # one applies depends on the site this runs at): only the parser knows.
                return None
            continue
        if (table, key) == ("[logship]", "state_dir"):
            found.append(_plain_string(value.strip()))
        elif table == "" and key.startswith("logship"):
            return None  # `logship.state_dir = ...` or an inline table
    if len(found) != 1 or not found[0]:
        return None
    path = os.path.expanduser(found[0])
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(config), path)
