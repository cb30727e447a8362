"""The permission bits a files connector's path gets at the site.

A shipped file belongs to the site's SSH user: a setuid or setgid bit copied
from the source would run it as that user, so those bits (and sticky) never
reach the site. Group and other write are stripped too unless the connector's
`keep_write_bits` says otherwise: a file any local user at the site can
rewrite is what a failover would run. `verify` compares modes after the same
masking (see logship.engines.files.verify_run).
"""

from __future__ import annotations

#: never set on a shipped file at the site, whatever the source has
SITE_STRIPPED = 0o7000
#: group and other write: stripped unless `keep_write_bits = true`
WRITE_BITS = 0o022
#: never set on a shipped folder: setuid/setgid (sticky only restricts, it stays)
FOLDER_STRIPPED = 0o6000


def site_mode(mode: int, *, folder: bool, keep_write_bits: bool) -> int:
    """The permission bits the site gets for a path with source mode `mode`."""
    stripped = FOLDER_STRIPPED if folder else SITE_STRIPPED
    if not keep_write_bits:
        stripped |= WRITE_BITS
    return mode & 0o7777 & ~stripped
