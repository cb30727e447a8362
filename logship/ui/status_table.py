"""The lag/RPO table shared by `status` and `dashboard`."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table
from rich.text import Text

from logship.lag import ConnectorStatus, State

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
        return _unknown()
    # "2025-01-31T12:00:00Z" on two lines keeps the column narrow.
    return Text(status.last_base_backup_at.replace("T", "\n", 1))


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
        notes.append(f"site {status.site}: {status.site_error}", style="red")
    return notes


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
            Text.assemble(status.name, (f"\n{status.kind} → {status.site}", "dim")),
            Text(str(status.state), style=STATE_STYLES[status.state]),
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
