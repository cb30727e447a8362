"""Opening the catalog a config names, for the verbs that write to it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from logship.errors import OperationFailed, first_line

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
    from logship.config.model import Config

# scheme://user:password@ -> the password part, for URLs SQLAlchemy cannot parse
_USERINFO_PASSWORD = re.compile(r"(?<=://)([^/@:]*):([^/@]*)@")
MASK = "***"


def shown_url(url: str) -> str:
    """The catalog URL as it may be printed or logged: with its password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        if _USERINFO_PASSWORD.search(url):
            return _USERINFO_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", url)
        # Not a URL at all: where a secret would sit in it is anyone's guess.
        return "(catalog_url, not a valid URL)"
    # libpq also takes a password (or sslpassword) as a query parameter.
    secret_keys = [key for key in parsed.query if "password" in key.lower()]
    if secret_keys:
        parsed = parsed.update_query_dict(dict.fromkeys(secret_keys, MASK))
    return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def scrub(text: str, url: str) -> str:
    """`text` (an error message) without the catalog URL's password in it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = text.replace(url, shown_url(url))
    secrets: list[str] = []
    try:
        parsed = make_url(url)
        secrets += [str(parsed.password or "")]
        for key, value in parsed.query.items():
            if "password" in key.lower():
                secrets += [value] if isinstance(value, str) else list(value)
    except (ArgumentError, ValueError, TypeError):
        match = _USERINFO_PASSWORD.search(url)
        secrets += [match.group(2)] if match else []
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def open_catalog(config: Config) -> Catalog:
    """The config's catalog, created when new; one clear line when it cannot be opened.

    SQLAlchemy is imported here, not at module level: `standby restore` and the
    drill import modules that call this and never touch a catalog. The URL's
    password is never printed: an error line goes to terminals, logs and cron mail.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from logship.catalog.store import Catalog
    from logship.durable import ensure_private_dir

    url = config.catalog_url
    try:
        if config.logship.catalog_url is None:
            # The default SQLite catalog lives in state_dir, which may not exist yet.
            ensure_private_dir(config.logship.state_dir)
        return Catalog(url)
    except (OSError, SQLAlchemyError) as exc:
        raise OperationFailed(
            f"cannot open the catalog {shown_url(url)}: {scrub(first_line(exc), url)} (run as "
            "the user that runs the logship daemon)"
        ) from None
