"""Config fuzzing: whatever the files say, loading them gives a config or one
clear ConfigError line, never a traceback."""

from __future__ import annotations

import json
import math
import string
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from logship.config.load import load_config
from logship.errors import LogshipError

KEYS = [
    "state_dir", "reconcile_interval", "lag_sample_interval", "catalog_url",
    "host", "port", "user", "identity_file", "known_hosts", "root", "command",
    "connect_timeout", "kind", "site", "rpo", "compression", "heartbeat",
    "heartbeat_interval", "dsn", "data_dir", "bin_dir", "check_dsn", "source",
    "exclude", "delete", "settle", "target", "action", "connectors", "cron",
    "timezone", "misfire_grace", "drill", "keep_backups", "keep_within",
    "scratch_dir", "listen", "hooks", "webhook", "name",
]  # fmt: skip
SECTIONS = ["logship", "sites", "primary", "standby", "retention", "drill", "metrics", "alerts"]
#: a right-to-left override, NUL, DEL and a lone surrogate (which UTF-8 cannot encode)
ODD_CHARS = ["é", "\u202e", "\x00", "\x7f", "\ud800"]
ODD_TEXT = st.text(
    alphabet=st.sampled_from(
        [*(string.ascii_letters + string.digits + " ./-_$`'\"\\\n\t*[]{}#=%"), *ODD_CHARS]
    ),
    max_size=30,
)
SCALARS = st.one_of(
    ODD_TEXT,
    st.sampled_from(
        ["60s", "1h", "0", "-5s", "5 s", "postgresql", "files", "zstd", "dr", "/", "../..", "~"]
    ),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | ODD_TEXT, inner, max_size=4),
    ),
    max_leaves=12,
)
TABLES = st.dictionaries(st.sampled_from(KEYS + SECTIONS) | ODD_TEXT, VALUES, max_size=8)


def _key(key: str) -> str:
    bare = key and all(c in string.ascii_letters + string.digits + "_-" for c in key)
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    """An inline TOML value; what TOML cannot say (a NaN, a lone surrogate, a number
    out of range) comes out as text TOML rejects, which is a case too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"


def _toml(table: dict[str, Any]) -> str:
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in table.items())


SKELETONS = [
    {
        "kind": "postgresql",
        "site": "dr",
        "rpo": "60s",
        "primary": {"dsn": "host=/tmp"},
        "standby": {"dsn": "host=/tmp", "data_dir": "/var/lib/x"},
    },
    {
        "kind": "files",
        "site": "dr",
        "rpo": "60s",
        "source": "/opt/app",
        "standby": {"target": "/a"},
    },
    {"action": "verify", "connectors": ["c"], "cron": "0 * * * *"},
]
#: a valid connector or schedule with fuzzed keys laid over it, so that the
#: fuzz reaches past the first missing key
OVERLAID = st.builds(
    lambda skeleton, extra: {**skeleton, **extra}, st.sampled_from(SKELETONS), TABLES
)
FILE_NAMES = st.text(
    alphabet=string.ascii_lowercase + string.digits + " -_.é", min_size=1, max_size=12
)


@settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    main=TABLES,
    connectors=st.dictionaries(FILE_NAMES, TABLES | OVERLAID | st.binary(max_size=40), max_size=3),
    schedules=st.dictionaries(FILE_NAMES, TABLES | OVERLAID, max_size=2),
    valid_start=st.booleans(),
)
def test_any_config_loads_or_fails_with_one_clear_line(
    main: dict[str, Any],
    connectors: dict[str, Any],
    schedules: dict[str, Any],
    valid_start: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if valid_start:
            # A real skeleton, so the fuzz reaches the connectors and schedules too.
            main = {
                "logship": {"state_dir": str(root / "state"), **main.get("logship", {})}
                if isinstance(main.get("logship"), dict)
                else {"state_dir": str(root / "state")},
                "sites": {
                    "dr": {
                        "host": "127.0.0.1",
                        "user": "u",
                        "root": "/x",
                        "identity_file": str(root / "key"),
                        "known_hosts": str(root / "known_hosts"),
                    }
                },
            }
            (root / "key").write_text("not read while loading")
            (root / "known_hosts").write_text("")
        (root / "logship.toml").write_text(_toml(main), errors="surrogatepass")
        for folder, files in (("connectors", connectors), ("schedules", schedules)):
            (root / folder).mkdir()
            for name, content in files.items():
                path = root / folder / f"{name}.toml"
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(_toml(content), errors="surrogatepass")
        try:
            load_config(root / "logship.toml")
            event("loaded")
        except LogshipError as exc:
            message = str(exc)
            # Which check stopped it (see --hypothesis-show-statistics).
            event(message.split(": ", 2)[1] if message.count(": ") >= 2 else message[:40])
            assert message and "\n" not in message.strip(), message
            assert "Traceback" not in message
