"""One entry of `status --json`, and its JSON.

Every entry has every field, whatever the connector's kind: a figure that does
not apply to a kind, or cannot be measured yet, is null. The JSON is the
dataclass's fields in their order, so a field added here is a field of the
output; the contract fields (docs/reference/status-json.md) come first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from logship.status.state import State


@dataclass(frozen=True)
class Gap:
    """The first file missing from a connector's sequence; replay cannot pass it."""

    missing: str  # named as it would be named in the sequence
    segment_number: int
    after: str  # the last file present before the gap

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Gap:
        return cls(entry["missing"], int(entry["segment_number"]), entry["after"])


def _from_json(decode: Any) -> dict[str, Any]:
    """Field metadata: how `ConnectorStatus.from_json` turns the JSON value back."""
    return {"from_json": decode}


@dataclass(frozen=True)
class ConnectorStatus:
    """The contract fields, then the ones each engine fills in where they apply.

    Each stage's figures carry when they were measured, so a stale number shows
    as stale.
    """

    name: str
    kind: str
    site: str
    state: State = field(metadata=_from_json(State))
    rpo_target_s: float
    rpo_exposure_s: float | None
    transport_lag_s: float | None
    apply_lag_s: float | None
    pending_files: int | None
    pending_bytes: int | None
    last_shipped: str | None
    last_applied: str | None
    last_base_backup_at: str | None
    gap: Gap | None = field(default=None, metadata=_from_json(Gap.from_json))
    #: this site's role for the connector: "primary" or "standby" as its databases
    #: say (a connector with [sides.*]); null for a one-way connector
    role: str | None = None
    #: where shipping runs: "PRIMARY_SITE -> STANDBY_SITE" ("primary -> SITE" for a
    #: one-way connector, whose primary's site has no name)
    direction: str | None = None
    site_error: str | None = None
    #: a database's primary: its archiver's backlog and failures
    archive_ready_files: int | None = None
    archive_failed_count: int | None = None
    archive_last_failed_at: str | None = None
    primary_measured_at: str | None = None
    #: a database's standby: how fast it replays, what is left, and the time that takes
    replay_rate_bps: float | None = None
    replay_backlog_bytes: int | None = None
    rto_estimate_s: float | None = None
    standby_measured_at: str | None = None
    standby_error: str | None = None
    #: a database's WAL streaming: "streaming", "catchup", "down" or "off"; the
    #: position its standby has flushed; the synchronous mode in force ("async",
    #: "availability", "protection"; null when not streaming); what the slot holds
    #: back at the primary; when it was measured and why it is down
    streaming: str | None = None
    stream_flush_lsn: str | None = None
    sync_mode: str | None = None
    slot_retained_bytes: int | None = None
    stream_measured_at: str | None = None
    stream_error: str | None = None
    #: the connector's next scheduled job (schedules/*.toml) as the daemon planned it
    next_job: str | None = None
    next_job_at: str | None = None
    #: the connector's most recently finished scheduled job, and its error if it failed
    last_job: str | None = None
    last_job_at: str | None = None
    last_job_error: str | None = None
    #: the newest restore drill ("passed" or "failed") and when it finished
    drill_state: str | None = None
    drill_at: str | None = None
    drill_error: str | None = None
    #: restore + replay seconds of the newest drill that passed: a measured rebuild
    rebuild_rto_s: float | None = None
    #: the newest `verify`: paths that differ at the site (null when it failed or
    #: never ran), when it finished, and why it failed
    drift_files: int | None = None
    verified_at: str | None = None
    verify_error: str | None = None
    #: a files connector: rounds that changed the site so far, the newest complete
    #: consistency point and when it completed, and how many are still open
    sync_generation: int | None = None
    consistency_point: str | None = None
    consistency_at: str | None = None
    consistency_open: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ConnectorStatus:
        """Back from one `status --json` entry (for views fed by another process)."""
        values = {}
        for f in fields(cls):
            value = entry.get(f.name)
            decode = f.metadata.get("from_json")
            if decode is not None:
                value = decode(value) if value else None
            values[f.name] = value
        return cls(**values)


def _json_value(value: Any) -> Any:
    if isinstance(value, Enum):
        return str(value)  # a plain str: the JSON encoder sees no enum
    to_json = getattr(value, "to_json", None)
    return to_json() if to_json is not None else value


def failed_status(
    *, name: str, kind: str, site: str, rpo_target_s: float, error: str
) -> ConnectorStatus:
    """A connector whose status could not be computed: shown as `down` with why,
    every figure unknown (null), so the failure is seen and nothing is made up."""
    return ConnectorStatus(
        name=name,
        kind=kind,
        site=site,
        state=State.DOWN,
        rpo_target_s=float(rpo_target_s),
        rpo_exposure_s=None,
        transport_lag_s=None,
        apply_lag_s=None,
        pending_files=None,
        pending_bytes=None,
        last_shipped=None,
        last_applied=None,
        last_base_backup_at=None,
        site_error=error,
    )
