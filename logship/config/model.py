"""Typed, validated configuration. Everything is checked at load time."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator

from logship.config.durations import parse_duration, parse_wait
from logship.errors import UsageError

Seconds = Annotated[float, BeforeValidator(parse_duration)]
#: a duration that may be 0 ("0s": never)
WaitSeconds = Annotated[float, BeforeValidator(parse_wait)]


class Strict(BaseModel):
    # An unknown key is almost always a typo of a known one: refuse it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogshipSection(Strict):
    #: the spool, the SQLite catalog and the daemon's lock live here
    state_dir: Path
    #: a SQLAlchemy URL for a shared PostgreSQL catalog
    #: (`postgresql+psycopg://...`); unset: SQLite in `state_dir`
    catalog_url: str | None = None
    #: how often the spool (and a files connector's `source`) is rescanned: events can be lost
    reconcile_interval: Seconds = 30.0
    #: how often the standby's progress is read at its site
    lag_sample_interval: Seconds = 5.0


class SiteConfig(Strict):
    name: str
    #: the standby site's SSH server
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    #: the OS user that runs the standby PostgreSQL there (normally `postgres`)
    user: str = Field(min_length=1)
    #: the private key (key authentication only, no passwords); a key that group or
    #: others may read is refused (chmod 600)
    identity_file: Path
    #: the site's host key must match: an unknown host is refused, `@revoked` keys
    #: are refused, host certificates (`@cert-authority`) are not supported (pin the key)
    known_hosts: Path
    #: the folder at that site that receives every connector's files
    root: PurePosixPath
    #: how long one SSH connection attempt may take
    connect_timeout: Seconds = 10.0
    #: a site that answers nothing for this long is treated as lost (a stalled link
    #: gives no error of its own); a `tree-receive` not ready by then, as absent
    io_timeout: Seconds = Field(default=30.0, gt=0)
    #: SSH connections that ship a backlog side by side (one is always kept)
    connections: int = Field(default=4, ge=1, le=16)
    #: how to run logship at that site, as an argument list: the daemon runs
    #: `standby status`, `tree-receive` and `drill` through it, `check` its `--version`
    command: list[str] = Field(default=["logship"], min_length=1)
    #: the site's key is a `site-gate` forced command: add new files only, never
    #: replace or remove one (the site runs retention itself); no files connector
    #: may target such a site; see docs/guide/operations.md
    restricted: StrictBool = False
    #: logship's state_dir when it runs at this site, when not `[logship] state_dir`
    #: (two sites on one host; the same files at both sites)
    state_dir: Path | None = None

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, value: PurePosixPath) -> PurePosixPath:
        if not value.is_absolute():
            raise ValueError("must be an absolute path at the standby site")
        return value


class MetricsSection(Strict):
    #: host:port for the Prometheus endpoint; off when unset
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str | None) -> str | None:
        if value is not None:
            from logship.errors import ConfigError
            from logship.status.prometheus import parse_listen

            try:
                parse_listen(value)
            except ConfigError as exc:
                # The loader adds the file and key; keep only the problem.
                raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return value


class AlertsSection(Strict):
    #: commands (argument lists) run on each state change; facts in env and on stdin
    hooks: list[list[str]] = Field(default_factory=list)
    #: an http:// or https:// URL that gets the same JSON as a POST
    webhook: str | None = None
    #: while a bad state lasts, fire again after this long
    repeat: Seconds = 600.0
    #: a hook (or the webhook) taking longer is killed and logged
    timeout: Seconds = 30.0

    @field_validator("hooks")
    @classmethod
    def _hooks_are_commands(cls, value: list[list[str]]) -> list[list[str]]:
        if any(not hook or not hook[0] for hook in value):
            raise ValueError('each hook is a command as a list, e.g. ["/usr/local/bin/page"]')
        return value

    @field_validator("webhook")
    @classmethod
    def _http_webhook(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class HistorySection(Strict):
    #: how long lag samples are kept
    keep: Seconds = 7 * 86400.0
    #: one sample per connector per window this long, holding its worst exposure
    resolution: Seconds = 10.0


CONNECTOR_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
CONNECTOR_NAME_MAX = 64


class ConnectorBase(Strict):
    """Keys every connector has; each engine adds its own sections."""

    #: it names folders and files at both sites, lock files and catalog rows
    name: str = Field(pattern=CONNECTOR_NAME_PATTERN, max_length=CONNECTOR_NAME_MAX)
    #: which engine protects it (see the sections below)
    kind: str
    #: the `[sites.NAME]` it ships to
    site: str
    #: the most data (as time) you accept to lose; `status` measures the exposure against it
    rpo: Seconds
    #: how files are stored at the site
    compression: Literal["zstd", "none"] = "zstd"


class ScheduleConfig(Strict):
    """One `schedules/*.toml` job: an action, run for each of its connectors in turn."""

    #: names the job
    name: str
    #: what to run: one of the actions each connector's kind allows (listed with it
    #: above; the loader checks it fits each connector)
    action: str
    #: run for each, one after the other
    connectors: list[str] = Field(min_length=1)
    #: crontab: 5 fields (minute hour day-of-month month day-of-week), or 6 with a
    #: leading seconds field
    cron: str
    #: the time zone the cron fields are read in (IANA name)
    timezone: str = "UTC"
    #: a run missed while the daemon was down still happens once if the daemon is
    #: back within this long of the planned time
    misfire_grace: Seconds = Field(default=3600.0, ge=0)
    #: base-backup only: prove each new backup with a restore drill at the standby site
    drill: bool = True

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        from logship.engines.registry import engines

        known = sorted(
            {action for engine in engines().values() for action in engine.schedule_actions}
        )
        if value not in known:
            raise ValueError(f"unknown action {value!r} (known: {', '.join(known)})")
        return value

    @field_validator("connectors")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a connector twice")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f'unknown time zone {value!r} (e.g. "UTC", "Europe/Berlin")') from None
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            cron_trigger(value, "UTC")
        except ValueError as exc:
            raise ValueError(f"not a crontab expression: {exc}") from None
        return value

    @property
    def trigger_key(self) -> str:
        """What decides the run times: a stored plan only counts for the same key."""
        return f"{self.cron} {self.timezone}"

    def trigger(self) -> Any:
        return cron_trigger(self.cron, self.timezone)


def cron_trigger(expression: str, timezone: str) -> Any:
    """APScheduler's CronTrigger for 5 crontab fields, or 6 with leading seconds."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expression, timezone=timezone)
    if len(fields) == 6:
        second, minute, hour, day, month, day_of_week = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone=timezone,
        )
    raise ValueError(f"has {len(fields)} fields; expected 5 (or 6 with seconds first)")


C = TypeVar("C", bound=ConnectorBase)


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    logship: LogshipSection
    sites: dict[str, SiteConfig]
    #: the site this process runs at, when known (`--this-site`, $LOGSHIP_SITE, hostname)
    this_site: str | None = None
    connectors: dict[str, Any]  # name -> the engine's ConnectorBase subclass
    schedules: dict[str, ScheduleConfig]
    metrics: MetricsSection = MetricsSection()
    alerts: AlertsSection = AlertsSection()
    history: HistorySection = HistorySection()

    def connector(self, name: str) -> Any:
        try:
            return self.connectors[name]
        except KeyError:
            known = ", ".join(sorted(self.connectors)) or "none configured"
            raise UsageError(f"unknown connector {name!r} (known: {known})") from None

    def connector_of_kind(self, name: str, kind: type[C], what_for: str) -> C:
        """The connector `name` if it is a `kind`; UsageError saying `what_for` if not."""
        connector = self.connector(name)
        if not isinstance(connector, kind):
            raise UsageError(f"connector {name!r} is kind {connector.kind!r}; {what_for}")
        return connector

    def site_of(self, connector: ConnectorBase) -> SiteConfig:
        return self.sites[connector.site]

    @property
    def catalog_url(self) -> str:
        if self.logship.catalog_url:
            return self.logship.catalog_url
        return f"sqlite:///{self.logship.state_dir / 'catalog.db'}"

    def spool_dir(self, connector: str) -> Path:
        from logship.config.files import spool_dir

        return spool_dir(self.logship.state_dir, connector)
