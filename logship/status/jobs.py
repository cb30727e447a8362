"""What a connector's scheduled jobs last did and will do next, as status fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from logship.status.figures import iso_utc, rounded

if TYPE_CHECKING:
    from logship.catalog.store import Catalog


class DrillRow(Protocol):
    state: str
    finished_at: float | None
    error: str | None
    restore_s: float | None
    replay_s: float | None


class VerifyRow(Protocol):
    """What status needs from a `FilesVerify` row (a files connector's `verify`)."""

    state: str  # clean, drift, failed
    finished_at: float | None
    drift: int | None
    error: str | None


@dataclass(frozen=True)
class JobFacts:
    """What the scheduled jobs of a connector last did and will do next."""

    next_job: tuple[str, float] | None = None  # (action, planned time)
    last_job: tuple[str, float, str | None] | None = None  # (action, finished, error)
    last_drill: DrillRow | None = None
    last_passed_drill: DrillRow | None = None
    #: the newest finished `verify`
    last_verify: VerifyRow | None = None


def scheduled_jobs(catalog: Catalog, connector: str) -> JobFacts:
    """The next planned job and the last finished one; an engine adds the outcomes
    of its own jobs (drills, verifies)."""
    rows = catalog.schedules(connector)  # soonest planned first
    planned = [(row.job, row.next_run_at) for row in rows if row.next_run_at is not None]
    finished = [
        (row.job, row.last_finished_at, row.last_error)
        for row in rows
        if row.last_finished_at is not None
    ]
    return JobFacts(
        next_job=planned[0] if planned else None,
        last_job=max(finished, key=lambda job: job[1], default=None),
    )


def job_fields(jobs: JobFacts) -> dict[str, Any]:
    """The `ConnectorStatus` fields that `jobs` fills in."""
    next_job, last_job, drill = jobs.next_job, jobs.last_job, jobs.last_drill
    passed = jobs.last_passed_drill
    rebuild = None
    if passed is not None and passed.restore_s is not None and passed.replay_s is not None:
        rebuild = rounded(passed.restore_s + passed.replay_s)
    return {
        "next_job": next_job[0] if next_job else None,
        "next_job_at": iso_utc(next_job[1]) if next_job else None,
        "last_job": last_job[0] if last_job else None,
        "last_job_at": iso_utc(last_job[1]) if last_job else None,
        "last_job_error": last_job[2] if last_job else None,
        "drill_state": drill.state if drill else None,
        "drill_at": iso_utc(drill.finished_at) if drill else None,
        "drill_error": drill.error if drill else None,
        "rebuild_rto_s": rebuild,
        **_verify_fields(jobs.last_verify),
    }


def _verify_fields(verify: VerifyRow | None) -> dict[str, Any]:
    if verify is None:
        return {"drift_files": None, "verified_at": None, "verify_error": None}
    failed = verify.state == "failed"
    return {
        # A verify that could not compare knows nothing about drift: null, not 0.
        "drift_files": None if failed else verify.drift,
        "verified_at": iso_utc(verify.finished_at),
        "verify_error": verify.error if failed else None,
    }
