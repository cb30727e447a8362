"""The files connector's part of `logship check`: the generic site checks cover it.

It runs `tree-receive` at the site when logship runs there, and falls
back to one SFTP request per file when it does not.
"""

from __future__ import annotations

from collections.abc import Sequence

from logship.checks import CheckRunner, SiteCommandUse
from logship.config.model import Config, ConnectorBase, SiteConfig
from logship.ship.sftp import SftpTransport


class FilesChecks:
    site_command = SiteCommandUse(
        needed=False, without_it="the files connector falls back to per-file SFTP: slower"
    )

    def site_checks(
        self,
        site: SiteConfig,
        connectors: Sequence[ConnectorBase],
        transport: SftpTransport,
        runner: CheckRunner,
        site_logship: str | None,
    ) -> None:
        return None

    def source_checks(self, config: Config, connector: ConnectorBase, runner: CheckRunner) -> None:
        return None


FILES_CHECKS = FilesChecks()
