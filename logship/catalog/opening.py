"""Opening the catalog a config names, for the verbs that write to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from logship.errors import OperationFailed, first_line

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
    from logship.config.model import Config


def open_catalog(config: Config) -> Catalog:
    """The config's catalog, created when new; one clear line when it cannot be opened.

    SQLAlchemy is imported here, not at module level: `standby restore` and the
    drill import modules that call this and never touch a catalog.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from logship.catalog.store import Catalog
    from logship.durable import ensure_private_dir

    try:
        if config.logship.catalog_url is None:
            # The default SQLite catalog lives in state_dir, which may not exist yet.
            ensure_private_dir(config.logship.state_dir)
        return Catalog(config.catalog_url)
    except (OSError, SQLAlchemyError) as exc:
        raise OperationFailed(
            f"cannot open the catalog {config.catalog_url}: {first_line(exc)} (run as the "
            "user that runs the logship daemon)"
        ) from None
