"""Whether pg_rewind can turn a stopped old primary into a copy of the new primary.

`rewind_safety` checks what makes pg_rewind fail or, worse, succeed on a copy that
is not consistent; `run_rewind` (rewind_run.py) runs it. The caller falls back to a
fresh base backup when the rewind is not safe, and shows the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from logship.engines.postgresql import walnames
from logship.engines.postgresql.postmaster import running_server
from logship.engines.postgresql.rewind_parse import CLEAN_STATES, CRASHED_STATES, ControlData
from logship.engines.postgresql.rewind_source import read_source, request_checkpoint
from logship.engines.postgresql.rewind_target import (
    live_setting,
    read_controldata,
    read_target_history,
    run_as_owner,
)
from logship.engines.postgresql.rewind_wal import check_target_wal, find_divergence
from logship.engines.postgresql.timeline_history import HistoryEntry
from logship.engines.postgresql.tools import find_program, read_pg_version
from logship.errors import LogshipError, OperationFailed, first_line

# Missing segments named in a reason; the facts list them all.
MAX_NAMED = 10


@dataclass
class RewindFacts:
    """What the checks found; None where it could not be told."""

    old_state: str | None = None
    old_timeline: int | None = None
    old_system_identifier: int | None = None
    old_wal_end: str | None = None
    crash_recovery_first: bool = False
    checksums: bool | None = None
    #: what lets pg_rewind see every changed block: "data checksums" or "wal_log_hints"
    block_tracking: str | None = None
    wal_log_hints_control: bool | None = None
    wal_log_hints_config: bool | None = None
    restore_command: str | None = None
    source_role: str | None = None
    source_timeline: int | None = None
    source_checkpoint_timeline: int | None = None
    source_system_identifier: int | None = None
    checkpoint_requested: bool = False
    divergence_lsn: str | None = None
    last_common_checkpoint: str | None = None
    wal_needed: list[str] = field(default_factory=list)
    wal_missing: list[str] = field(default_factory=list)
    wal_from_restore_command: list[str] = field(default_factory=list)


@dataclass
class RewindSafety:
    safe: bool
    reasons: list[str]
    facts: RewindFacts
    #: not blocking this rewind, but worth showing (e.g. a setting that changed)
    notes: list[str] = field(default_factory=list)


# -- the checks --------------------------------------------------------------------------


def _check_hints(
    control: ControlData, config_hints: bool | None, facts: RewindFacts
) -> tuple[list[str], list[str]]:
    reasons: list[str] = []
    notes: list[str] = []
    if control.checksum_version != 0:
        # Every hint-bit change is WAL-logged with checksums on, whatever the setting.
        facts.block_tracking = "data checksums"
        return reasons, notes
    if control.wal_log_hints and config_hints is not False:
        facts.block_tracking = "wal_log_hints"
    if not control.wal_log_hints:
        if config_hints:
            reasons.append(
                "wal_log_hints: the configuration now says on, but pg_control says the old "
                "primary last ran with it off (the setting was changed without a restart, "
                "or after the stop), and data checksums are off: its WAL since the fork "
                "lacks hint-bit changes, so pg_rewind would miss blocks"
            )
        else:
            reasons.append(
                "wal_log_hints is off (pg_control and configuration) and data checksums "
                "are off: pg_rewind cannot see every block the old primary changed"
            )
    elif config_hints is False:
        facts.block_tracking = "wal_log_hints (pg_control only)"
        notes.append(
            "wal_log_hints: pg_control says on but the configuration now says off: this "
            "rewind is safe, a later one would not be"
        )
    return reasons, notes


def _check_source(
    source_dsn: str,
    control: ControlData,
    pg_version: str | None,
    facts: RewindFacts,
    *,
    checkpoint: bool,
) -> tuple[list[str], list[HistoryEntry] | None]:
    reasons: list[str] = []
    source = read_source(source_dsn)
    if not source.reachable or source.error:
        return [f"the new primary cannot be queried: {source.error}"], None
    facts.source_role = source.role
    facts.source_system_identifier = source.system_identifier
    facts.source_timeline = source.timeline
    facts.source_checkpoint_timeline = source.checkpoint_timeline
    if source.missing_grants:
        grants = "; ".join(
            f"GRANT EXECUTE ON FUNCTION {fn} TO {source.role}" for fn in source.missing_grants
        )
        reasons.append(
            f"role {source.role!r} at the new primary is not a superuser and lacks what "
            f"pg_rewind runs: {grants}"
        )
    if source.in_recovery:
        reasons.append("the new primary is in recovery: promote it first")
    if source.system_identifier != control.system_identifier:
        reasons.append(
            f"system identifiers differ (old primary {control.system_identifier}, new "
            f"primary {source.system_identifier}): not copies of one cluster"
        )
    if pg_version and source.major_version != int(float(pg_version)):
        reasons.append(
            f"major versions differ (old primary {pg_version}, new primary {source.major_version})"
        )
    if source.full_page_writes is False:
        reasons.append("full_page_writes is off at the new primary; pg_rewind requires it")
    if source.timeline is not None and source.timeline <= control.timeline:
        reasons.append(
            f"the new primary's timeline {source.timeline} is not higher than the old "
            f"primary's {control.timeline}: it was not promoted from a copy of it"
        )
    elif source.timeline is not None and source.checkpoint_timeline != source.timeline:
        if checkpoint:
            facts.checkpoint_requested = True
            try:
                facts.source_checkpoint_timeline = request_checkpoint(source_dsn)
            except OperationFailed as exc:
                reasons.append(str(exc))
                return reasons, source.history
        if facts.source_checkpoint_timeline != source.timeline:
            reasons.append(
                f"the new primary has not checkpointed since its promotion (its pg_control "
                f"says timeline {facts.source_checkpoint_timeline}, it runs "
                f"{source.timeline}): pg_rewind would see no fork; run CHECKPOINT there"
            )
    if source.history_error:
        reasons.append(f"cannot read the new primary's timeline history: {source.history_error}")
    return reasons, source.history


def rewind_safety(
    old_data_dir: Path,
    bin_dir: Path | None,
    source_dsn: str,
    *,
    config_file: Path | None = None,
    checkpoint: bool = True,
) -> RewindSafety:
    """Whether pg_rewind may rewind `old_data_dir` from the server at `source_dsn`.

    `config_file` is the server's postgresql.conf when it is not in the data dir
    (Debian keeps it in /etc/postgresql); pass the same to `run_rewind`.
    `checkpoint=False` reports a missing post-promotion checkpoint instead of
    running CHECKPOINT on the source (the only thing this may change).
    """
    data_dir = old_data_dir.resolve()
    facts = RewindFacts()
    reasons: list[str] = []
    notes: list[str] = []
    try:
        control = read_controldata(data_dir, bin_dir)
    except LogshipError as exc:
        return RewindSafety(False, [str(exc)], facts)
    facts.old_state = control.state
    facts.old_timeline = control.timeline
    facts.old_system_identifier = control.system_identifier
    facts.checksums = control.checksum_version != 0
    facts.wal_log_hints_control = control.wal_log_hints
    running = running_server(data_dir)
    if running is not None:
        reasons.append(f"the old primary is running ({running}): stop it first")
    elif control.state in CRASHED_STATES:
        facts.crash_recovery_first = True
        notes.append(
            f"the old primary was not stopped cleanly (state {control.state!r}): pg_rewind "
            "first runs crash recovery in single-user mode"
        )
    elif control.state not in CLEAN_STATES:
        reasons.append(f"the old primary's cluster state is {control.state!r}, not stopped")
    try:
        hints = live_setting(data_dir, bin_dir, "wal_log_hints", config_file)
        facts.wal_log_hints_config = {"on": True, "off": False}.get(hints)
        facts.restore_command = live_setting(data_dir, bin_dir, "restore_command", config_file)
    except LogshipError as exc:
        reasons.append(f"cannot read the old primary's configuration: {exc}")
    hint_reasons, hint_notes = _check_hints(control, facts.wal_log_hints_config, facts)
    reasons += hint_reasons
    notes += hint_notes
    source_reasons, source_history = _check_source(
        source_dsn, control, read_pg_version(data_dir), facts, checkpoint=checkpoint
    )
    reasons += source_reasons
    # The WAL is checked whenever the fork can be found, so that one run names
    # everything to fix (a missing grant and a missing segment alike).
    same_cluster = facts.source_system_identifier == control.system_identifier
    if (
        source_history is not None
        and same_cluster
        and facts.source_timeline is not None
        and facts.source_timeline > control.timeline
    ):
        reasons += _check_wal(data_dir, bin_dir, control, source_history, facts, notes)
    return RewindSafety(not reasons, reasons, facts, notes)


def _check_wal(
    data_dir: Path,
    bin_dir: Path | None,
    control: ControlData,
    source_history: list[HistoryEntry],
    facts: RewindFacts,
    notes: list[str],
) -> list[str]:
    try:
        target_history = read_target_history(data_dir, control.timeline)
    except OperationFailed as exc:
        return [f"the old primary's timeline history: {exc}"]
    assert facts.source_timeline is not None
    fork = find_divergence(control.timeline, target_history, facts.source_timeline, source_history)
    if fork is None:
        return ["the two servers share no timeline: not copies of one cluster"]
    facts.divergence_lsn = walnames.int_to_lsn(fork[0])
    facts.old_wal_end = walnames.int_to_lsn(max(control.checkpoint_lsn, control.min_recovery_lsn))
    try:
        waldump = find_program("pg_waldump", bin_dir=bin_dir, data_dir=data_dir)
        wal = check_target_wal(
            data_dir,
            control,
            target_history,
            fork[0],
            waldump=waldump,
            restore_command=facts.restore_command or None,
            run=lambda argv, cwd, timeout: run_as_owner(data_dir, argv, cwd, timeout),
        )
    except (LogshipError, OSError) as exc:
        return [f"cannot check the old primary's WAL: {first_line(exc)}"]
    facts.wal_needed = wal.needed
    facts.wal_missing = wal.missing
    facts.wal_from_restore_command = wal.from_restore_command
    if wal.last_common_checkpoint is not None:
        facts.last_common_checkpoint = walnames.int_to_lsn(wal.last_common_checkpoint)
    reasons = []
    if wal.missing:
        where = " or through its restore_command" if facts.restore_command else ""
        shown = ", ".join(wal.missing[:MAX_NAMED])
        if len(wal.missing) > MAX_NAMED:
            shown += f" and {len(wal.missing) - MAX_NAMED} more"
        if wal.checkpoint_not_found:
            span = (
                f"the last checkpoint before the fork at {facts.divergence_lsn} is in or "
                f"before {wal.missing[0]}, so older segments may be needed too"
            )
        else:
            span = (
                f"it needs {wal.needed[0]} to {wal.needed[-1]}, from the last checkpoint "
                f"before the fork at {facts.divergence_lsn} to its end"
            )
        reasons.append(
            f"WAL the rewind reads is missing from the old primary's pg_wal{where}: "
            f"{shown} ({span})"
        )
    elif wal.problem:
        reasons.append(f"the old primary's WAL: {wal.problem}")
    if wal.from_restore_command:
        notes.append(
            f"{len(wal.from_restore_command)} WAL segment(s) come from restore_command: "
            "the rewind runs with --restore-target-wal"
        )
    return reasons


# run_rewind lives in its own module (it only needs the target's helpers); it is
# part of this module's API.
from logship.engines.postgresql.rewind_run import (  # noqa: E402
    RewindOutcome,
    RewindProgress,
    run_rewind,
)

__all__ = [
    "RewindFacts",
    "RewindOutcome",
    "RewindProgress",
    "RewindSafety",
    "request_checkpoint",
    "rewind_safety",
    "run_rewind",
]
