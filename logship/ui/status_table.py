"""The lag/RPO table shared by `status` and `dashboard`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

from logship.engines.registry import engine_for
from logship.errors import shown_text
from logship.status.model import ConnectorStatus
from logship.status.state import State

if TYPE_CHECKING:  # the table only reads a summary's fields
    from logship.status.history import WindowSummary

STATE_STYLES: dict[State, str] = {
    State.OK: "bold green",
    State.WARN: "bold yellow",
    State.BREACH: "bold red",
    State.DOWN: "bold white on red",
}
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def _unknown() -> Text:
    # null in --json: not measurable, which is not the same as zero
    return Text("—", style="dim")


def format_seconds(seconds: float | None) -> Text:
    if seconds is None:
        return _unknown()
    if seconds < 60:
        return Text(f"{seconds:.1f}s")
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return Text(f"{minutes}m{secs:02d}s")
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return Text(f"{hours}h{minutes:02d}m")
    days, hours = divmod(hours, 24)
    return Text(f"{days}d{hours:02d}h")


def format_bytes(size: int) -> str:
    value, index = float(size), 0
    while value >= 1024 and index < len(_BYTE_UNITS) - 1:
        value /= 1024
        index += 1
    return f"{size} B" if index == 0 else f"{value:.1f} {_BYTE_UNITS[index]}"


def _exposure(status: ConnectorStatus) -> Text:
    text = format_seconds(status.rpo_exposure_s)
    text.append(" / ", style="dim")
    text.append_text(format_seconds(status.rpo_target_s))
    return text


def _lags(status: ConnectorStatus) -> Text:
    return Text("\n").join(
        [format_seconds(status.transport_lag_s), format_seconds(status.apply_lag_s)]
    )


def _pending(status: ConnectorStatus) -> Text:
    if status.pending_files is None or status.pending_bytes is None:
        return _unknown()
    return Text(f"{status.pending_files}\n{format_bytes(status.pending_bytes)}")


def _name(value: str | None) -> Text:
    return _unknown() if value is None else Text(value)


def _wal(status: ConnectorStatus) -> Text:
    return Text("\n").join([_name(status.last_shipped), _name(status.last_applied)])


def _backup(status: ConnectorStatus) -> Text:
    if status.last_base_backup_at is None:
        text = _unknown()
    else:
        # "2025-01-31T12:00:00Z" on two lines keeps the column narrow.
        text = Text(status.last_base_backup_at.replace("T", "\n", 1))
    if drill := drill_label(status):
        text = Text("\n").join([text, drill])
    return text


_STREAM_STYLES = {"streaming": "green", "catchup": "yellow", "down": "bold red"}


def state_cell(status: ConnectorStatus) -> Text:
    """The state, and under it how WAL streams and the synchronous mode in force."""
    text = Text(str(status.state), style=STATE_STYLES[status.state])
    if status.streaming is None or status.streaming == "off":
        return text
    text.append("\n")
    text.append(f"stream {status.streaming}", style=_STREAM_STYLES.get(status.streaming, ""))
    if status.sync_mode is not None:
        text.append(f"\n{status.sync_mode}", style="bold" if status.sync_mode != "async" else "")
    return text


def drill_label(status: ConnectorStatus) -> Text | None:
    """The newest drill's verdict, with the measured rebuild time when one passed."""
    if status.drill_state == "failed":
        return Text("drill failed", style="bold red")
    if status.rebuild_rto_s is not None:
        return Text.assemble("rebuild ", format_seconds(status.rebuild_rto_s))
    return None


def _notes(status: ConnectorStatus) -> Text:
    notes = Text()
    if status.gap is not None:
        notes.append(f"{status.name}: ", style="bold")
        notes.append(
            f"WAL gap: {status.gap.missing} is missing after {status.gap.after}; "
            "replay cannot pass it",
            style="bold red",
        )
    if status.site_error:
        if notes:
            notes.append("\n")
        notes.append(f"{status.name}: ", style="bold")
        notes.append(f"site {status.site}: {shown_text(status.site_error)}", style="red")
    if status.stream_error and status.streaming != "off":
        if notes:
            notes.append("\n")
        notes.append(f"{status.name}: ", style="bold")
        notes.append(f"streaming: {shown_text(status.stream_error)}", style="yellow")
    if status.drill_state == "failed":
        if notes:
            notes.append("\n")
        notes.append(f"{status.name}: ", style="bold")
        notes.append(
            f"restore drill failed at {status.drill_at}: {shown_text(status.drill_error or '')}",
            style="red",
        )
    if status.drift_files:
        if notes:
            notes.append("\n")
        notes.append(f"{status.name}: ", style="bold")
        notes.append(
            f"verify found {status.drift_files} difference"
            f"{'' if status.drift_files == 1 else 's'} at site {status.site} at "
            f"{status.verified_at} (run `logship verify {status.name}` for the paths)",
            style="bold red",
        )
    elif status.verify_error:
        if notes:
            notes.append("\n")
        notes.append(f"{status.name}: ", style="bold")
        notes.append(
            f"verify failed at {status.verified_at}: {shown_text(status.verify_error)}", style="red"
        )
    # A job that failed because its drill (or verify) did is said once, by that line.
    drill_said = status.drill_state == "failed" and (status.drill_error or "") in (
        status.last_job_error or ""
    )
    verify_said = status.last_job == "verify" and bool(status.drift_files or status.verify_error)
    if status.last_job_error and not drill_said and not verify_said:
        if notes:
            notes.append("\n")
        notes.append(f"{status.name}: ", style="bold")
        notes.append(
            f"scheduled {status.last_job} failed at {status.last_job_at}: "
            f"{shown_text(status.last_job_error)}",
            style="red",
        )
    for reason in null_reasons(status):
        if notes:
            notes.append("\n")
        notes.append(f"{status.name}: ", style="bold")
        notes.append(reason, style="dim")
    return notes


def null_reasons(status: ConnectorStatus) -> list[str]:
    """Why a figure shows as unknown: a null is never left unexplained.

    The connector's engine knows what its own figures need; a status of a kind
    this logship does not know (from another version's `--json`) gets the reason
    every engine shares.
    """
    reasons = []
    if status.pending_files is None:
        reasons.append("no catalog yet: start `logship run` at the primary site")
    try:
        engine = engine_for(status.kind)
    except KeyError:
        return reasons
    return reasons + engine.null_reasons(status)


def build_status_table(statuses: Sequence[ConnectorStatus], *, title: str | None = None) -> Table:
    """One row per connector; cells fold rather than truncate, so no WAL name is cut.

    Gaps and site errors go in the caption, full width, where they can be read.
    """
    table = Table(
        title=title,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    longest = max((len(status.name) for status in statuses), default=0)
    table.add_column("connector\nkind → site", min_width=min(longest, 20), overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("exposure\n/ rpo", justify="right", no_wrap=True)
    table.add_column("lag\ntransport\napply", justify="right", no_wrap=True)
    table.add_column("pending\nfiles\nsize", justify="right", no_wrap=True)
    # A WAL name is read digit by digit; it is the last thing to fold.
    table.add_column("last shipped\nlast applied", min_width=24, overflow="fold")
    table.add_column("base\nbackup", overflow="fold")
    captions = []
    for status in statuses:
        table.add_row(
            Text.assemble(status.name, (f"\n{_where(status)}", "dim")),
            state_cell(status),
            _exposure(status),
            _lags(status),
            _pending(status),
            _wal(status),
            _backup(status),
        )
        if notes := _notes(status):
            captions.append(notes)
    if not statuses:
        captions.append(Text("no connectors configured", style="dim"))
    if captions:
        table.caption = Text("\n").join(captions)
    return table


def _where(status: ConnectorStatus) -> str:
    """kind → site; a two-sided connector: its direction and this site's role."""
    if status.role is None or status.direction is None:
        return f"{status.kind} → {status.site}"
    return f"{status.kind} {status.direction.replace(' -> ', ' → ')}, {status.role} here"


def status_notes(status: ConnectorStatus) -> Text:
    """The gap and site error lines `status` puts under its table (empty when none)."""
    return _notes(status)


def clock_time(timestamp: float, now: float) -> str:
    """Local wall-clock time; with the date when it is not today's."""
    moment = datetime.fromtimestamp(timestamp).astimezone()
    if moment.date() == datetime.fromtimestamp(now).astimezone().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M:%S")


MAX_BREACHES_SHOWN = 5


def _breaches(summary: WindowSummary, now: float) -> Text:
    if not summary.breaches:
        return Text("none", style="green" if summary.samples else "dim")
    shown = summary.breaches[-MAX_BREACHES_SHOWN:]
    lines = []
    if hidden := len(summary.breaches) - len(shown):
        lines.append(Text(f"… {hidden} earlier (see --json)", style="dim"))
    for breach in shown:
        line = Text(clock_time(breach.start, now))
        line.append(" to ")
        if breach.end is None:
            line.append("now", style="bold red")
        else:
            line.append(clock_time(breach.end, now))
        line.append("  peak ", style="dim")
        line.append_text(format_seconds(breach.peak_exposure_s))
        lines.append(line)
    return Text("\n").join(lines)


def build_since_table(
    rows: Sequence[tuple[ConnectorStatus, WindowSummary]], *, now: float, label: str
) -> Table:
    """`status --since`: per connector, the worst exposure, time in breach, the breaches."""
    table = Table(
        title=f"history, last {label}",
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("connector", overflow="fold")
    table.add_column("worst\nexposure", justify="right", no_wrap=True)
    table.add_column("in breach\n/ covered", justify="right", no_wrap=True)
    table.add_column("breaches\nstart to end, peak", overflow="fold")
    unsampled = []
    for status, summary in rows:
        worst = format_seconds(summary.worst_exposure_s)
        if summary.worst_exposure_at is not None:
            worst.append(f"\nat {clock_time(summary.worst_exposure_at, now)}", style="dim")
        in_breach = format_seconds(summary.breach_s)
        in_breach.append("\n/ ", style="dim")
        in_breach.append_text(format_seconds(summary.covered_s))
        table.add_row(Text(status.name), worst, in_breach, _breaches(summary, now))
        if summary.samples == 0:
            unsampled.append(status.name)
    if unsampled:
        table.caption = Text(
            f"no stored samples in this window for {', '.join(unsampled)}: figures are from "
            "this moment only (samples are stored while `logship run` runs)",
            style="dim",
        )
    return table
