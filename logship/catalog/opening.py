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
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return _USERINFO_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", url)


def scrub(text: str, url: str) -> str:
    """`text` (an error message) without the catalog URL's password in it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    text = text.replace(url, shown_url(url))
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError, TypeError):
        match = _USERINFO_PASSWORD.search(url)
        password = match.group(2) if match else None
    if password:
        text = text.replace(str(password), MASK)
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
