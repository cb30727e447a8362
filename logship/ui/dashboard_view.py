"""What `logship dashboard` draws: one row per connector, exposure history, recent events.

Pure rendering from figures gathered elsewhere (`cli.dashboard.snapshot`), so the
layout is testable on a recording console. The layout is picked at render time
from the width rich offers, which is how a resized terminal gets a fitting view
on the next refresh: below `WIDE_MIN` columns the WAL names move out of the main
table into one of their own and the sparkline shrinks into the exposure cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from logship.errors import shown_text
from logship.status.history import Event
from logship.status.model import ConnectorStatus
from logship.status.state import WARN_FRACTION, State
from logship.ui.status_table import (
    STATE_STYLES,
    clock_time,
    drill_label,
    format_bytes,
    format_seconds,
    state_cell,
    status_notes,
)

WIDE_MIN = 130
NARROW_BAR = 15  # exposure bar and sparkline share the exposure cell when narrow
WIDE_BAR = 15
WIDE_SPARK_MIN, WIDE_SPARK_MAX = 20, 60
# Room the wide table needs besides its sparkline column.
_WIDE_FIXED = 110
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
NO_DATA = "·"
MAX_EVENTS = 6

# One point of exposure history: (time, exposure in seconds or None).
Point = tuple[float, float | None]


@dataclass(frozen=True)
class DashboardData:
    now: float
    statuses: Sequence[ConnectorStatus]
    #: per connector, exposure points over `spark_window_s`, oldest first
    history: Mapping[str, Sequence[Point]] = field(default_factory=dict)
    #: recent events, oldest first
    events: Sequence[Event] = ()
    spark_window_s: float = 600.0
    events_window_s: float = 3600.0
    #: how long a history point stands for the connector (see history.hold_for)
    hold_s: float = 25.0
    title: str | None = None
    note: str | None = None


def exposure_style(exposure: float | None, target: float) -> str:
    """The colour `status.state.classify` would give this exposure alone."""
    if exposure is None:
        return "dim"
    if exposure > target:
        return STATE_STYLES[State.BREACH]
    if exposure > WARN_FRACTION * target:
        return STATE_STYLES[State.WARN]
    return STATE_STYLES[State.OK]


def rpo_bar(exposure: float | None, target: float, width: int) -> Text:
    """Exposure as a share of the RPO target; full means the target is reached."""
    if exposure is None or target <= 0:
        return Text("░" * width, style="dim")
    filled = min(width, math.ceil(exposure / target * width)) if exposure > 0 else 0
    bar = Text("█" * filled, style=exposure_style(exposure, target).replace("bold ", ""))
    bar.append("░" * (width - filled), style="dim")
    return bar


def sparkline(
    points: Sequence[Point], *, start: float, end: float, width: int, ceiling: float, hold: float
) -> Text:
    """Exposure over [start, end], one character per slice, scaled to `ceiling` (the RPO).

    A slice shows the worst point in it; a slice without one shows the point
    before it while that still stands (`hold`), else `NO_DATA`: a hole in the
    history is shown as one, never smoothed over.
    """
    ordered = sorted((at, value) for at, value in points if value is not None and at <= end)
    step = (end - start) / width
    line = Text()
    index = 0
    last: Point | None = None
    for slot in range(width):
        slot_start, slot_end = start + slot * step, start + (slot + 1) * step
        worst: float | None = None
        while index < len(ordered) and ordered[index][0] < slot_end:
            at, value = ordered[index]
            if at >= slot_start and value is not None:
                worst = value if worst is None else max(worst, value)
            last = ordered[index]
            index += 1
        if worst is None and last is not None and slot_start - last[0] <= hold:
            worst = last[1]
        if worst is None:
            line.append(NO_DATA, style="dim")
            continue
        level = min(len(SPARK_BLOCKS) - 1, int(worst / ceiling * len(SPARK_BLOCKS)))
        line.append(SPARK_BLOCKS[max(0, level)], style=exposure_style(worst, ceiling))
    return line


def _unknown() -> Text:
    return Text("—", style="dim")


def _two(first: Text, second: Text) -> Text:
    return Text("\n").join([first, second])


def _backup_age(status: ConnectorStatus, now: float) -> Text:
    if status.last_base_backup_at is None:
        age = _unknown()
    else:
        finished = datetime.fromisoformat(status.last_base_backup_at).timestamp()
        age = format_seconds(max(0.0, now - finished))
    lines = [age]
    if status.next_job_at is not None:
        due = datetime.fromisoformat(status.next_job_at).timestamp() - now
        # A planned time in the past means no daemon is running the schedule.
        lines.append(
            Text("next ") + format_seconds(due) if due >= 0 else Text("overdue", style="red")
        )
    if drill := drill_label(status):
        lines.append(drill)
    return Text("\n").join(lines)


def _backlog(status: ConnectorStatus) -> Text:
    if status.pending_files is None or status.pending_bytes is None:
        return _unknown()
    return _two(Text(str(status.pending_files)), Text(format_bytes(status.pending_bytes)))


def _wal_name(value: str | None) -> Text:
    return _unknown() if value is None else Text(value)


class DashboardView:
    """A rich renderable: the whole dashboard for one refresh."""

    def __init__(self, data: DashboardData) -> None:
        self.data = data

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        wide = width >= WIDE_MIN
        if self.data.title:
            yield Text(self.data.title, style="bold", overflow="ellipsis", no_wrap=True)
        yield self._table(wide, width)
        if not wide and self.data.statuses:
            yield self._wal_table()
        notes = [n for n in (status_notes(s) for s in self.data.statuses) if n]
        if notes:
            yield Text("\n").join(notes)
        if self.data.note:
            yield Text(self.data.note, style="dim")
        yield self._events()

    def _spark(self, status: ConnectorStatus, width: int) -> Text:
        now = self.data.now
        return sparkline(
            self.data.history.get(status.name, ()),
            start=now - self.data.spark_window_s,
            end=now,
            width=width,
            ceiling=status.rpo_target_s,
            hold=self.data.hold_s,
        )

    def _exposure(self, status: ConnectorStatus, bar_width: int, with_spark: bool) -> Text:
        figures = format_seconds(status.rpo_exposure_s)
        figures.stylize(exposure_style(status.rpo_exposure_s, status.rpo_target_s))
        figures.append(" / ", style="dim")
        figures.append_text(format_seconds(status.rpo_target_s))
        lines = [rpo_bar(status.rpo_exposure_s, status.rpo_target_s, bar_width), figures]
        if with_spark:
            lines.append(self._spark(status, bar_width))
        return Text("\n").join(lines)

    def _table(self, wide: bool, width: int) -> Table:
        minutes = round(self.data.spark_window_s / 60)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        longest = max((len(s.name) for s in self.data.statuses), default=0)
        table.add_column("connector\nkind → site", min_width=min(longest, 20), overflow="fold")
        table.add_column("state", no_wrap=True)
        exposure_header = "exposure / rpo" if wide else f"exposure / rpo\nlast {minutes} min"
        table.add_column(exposure_header, no_wrap=True)
        table.add_column("lag\ntransport\napply", justify="right", no_wrap=True)
        table.add_column("backlog\nfiles\nbytes", justify="right", no_wrap=True)
        if wide:
            table.add_column("last shipped\nlast applied", min_width=24, overflow="fold")
        table.add_column("base\nbackup\nage", justify="right", no_wrap=True)
        spark_width = max(WIDE_SPARK_MIN, min(WIDE_SPARK_MAX, width - _WIDE_FIXED))
        if wide:
            table.add_column(f"exposure, last {minutes} min", no_wrap=True)
        for status in self.data.statuses:
            cells = [
                Text.assemble((status.name, "bold"), (f"\n{status.kind} → {status.site}", "dim")),
                state_cell(status),
                self._exposure(status, WIDE_BAR if wide else NARROW_BAR, with_spark=not wide),
                _two(format_seconds(status.transport_lag_s), format_seconds(status.apply_lag_s)),
                _backlog(status),
            ]
            if wide:
                cells.append(_two(_wal_name(status.last_shipped), _wal_name(status.last_applied)))
            cells.append(_backup_age(status, self.data.now))
            if wide:
                cells.append(self._spark(status, spark_width))
            table.add_row(*cells)
        if not self.data.statuses:
            table.caption = Text("no connectors configured", style="dim")
        return table

    def _wal_table(self) -> Table:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("connector", overflow="fold")
        table.add_column("last shipped", min_width=24, overflow="fold")
        table.add_column("last applied", min_width=24, overflow="fold")
        for status in self.data.statuses:
            table.add_row(
                Text(status.name, style="bold"),
                _wal_name(status.last_shipped),
                _wal_name(status.last_applied),
            )
        return table

    def _events(self) -> Panel:
        minutes = round(self.data.events_window_s / 60)
        span = f"last {minutes // 60} h" if minutes % 60 == 0 else f"last {minutes} min"
        recent = list(self.data.events)[-MAX_EVENTS:][::-1]
        if recent:
            body = Text("\n").join(
                Text.assemble(
                    (clock_time(item.at, self.data.now), "dim"),
                    "  ",
                    (item.connector, "bold"),
                    "  ",
                    (shown_text(item.message, 500), STATE_STYLES.get(item.state or "", "")),
                )
                for item in recent
            )
        else:
            body = Text(f"no events in the {span}", style="dim")
        return Panel(body, title=f"events, {span} (newest first)", title_align="left")
