"""What `logship demo` shows: steps, a live shipping/replay view, the final comparison.

Two renderings of the same facts: rich (spinner, live table, colours) on a terminal,
and plain one-fact-per-line text when stdout is a pipe or a file, so a CI log or a
test can read it.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from logship.status.model import ConnectorStatus
from logship.ui.status_table import build_status_table

WAL_SEGMENT_BYTES = 16 * 1024 * 1024


def lsn_to_int(lsn: str) -> int:
    """A PostgreSQL LSN ("16/B374D848") as a byte position."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True)
class ReplayPosition:
    """The primary's current WAL position and how far the standby has replayed."""

    primary_lsn: str | None
    standby_lsn: str | None

    @property
    def behind_bytes(self) -> int | None:
        if self.primary_lsn is None or self.standby_lsn is None:
            return None
        return max(0, lsn_to_int(self.primary_lsn) - lsn_to_int(self.standby_lsn))


@dataclass(frozen=True)
class DemoSnapshot:
    phase: str
    elapsed_s: float
    planned_s: float | None
    # Entries of `logship status --json`, as the CLI prints them.
    connectors: list[dict[str, Any]]
    status_error: str | None
    # Manifest records at the standby site: segments durable there.
    shipped: int
    replay: ReplayPosition


@dataclass(frozen=True)
class Comparison:
    # (what, value on the primary, value on the standby)
    rows: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return bool(self.rows) and all(p == s for _, p, s in self.rows)

    @property
    def matched(self) -> bool:
        # Equal and empty would "match" without showing anything was shipped.
        return self.equal and bool(self.rows[0][1])


@dataclass(frozen=True)
class ExposurePhase:
    """What `status` reported while one pgbench load ran: each reading's
    rpo_exposure_s, streaming state and synchronous mode, and pgbench's rate."""

    label: str
    exposures: tuple[float | None, ...] = ()
    streaming: tuple[str | None, ...] = ()
    sync_modes: tuple[str | None, ...] = ()
    tps: float | None = None

    @property
    def known(self) -> list[float]:
        return [value for value in self.exposures if value is not None]

    @property
    def p50(self) -> float | None:
        known = self.known
        return statistics.median(known) if known else None

    @property
    def max(self) -> float | None:
        known = self.known
        return max(known) if known else None

    @property
    def readings(self) -> int:
        return len(self.exposures)

    @staticmethod
    def _most_seen(values: tuple[str | None, ...]) -> str:
        """The value most readings showed; "(k of n)" when some showed another."""
        if not values:
            return "n/a"
        value, count = Counter(values).most_common(1)[0]
        shown = "n/a" if value is None else value
        return shown if count == len(values) else f"{shown} ({count} of {len(values)})"

    @property
    def streaming_state(self) -> str:
        return self._most_seen(self.streaming)

    @property
    def sync_mode(self) -> str:
        return self._most_seen(self.sync_modes)


def _exposure(value: float | None) -> str:
    # Streaming's exposure is a fraction of a second: one decimal would round it away.
    return "n/a" if value is None else f"{value:.2f}s"


def _tps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def exposure_summary(phases: list[ExposurePhase]) -> str | None:
    """One sentence comparing the last phase's median with the first's."""
    if len(phases) < 2 or phases[0].p50 is None or phases[-1].p50 is None:
        return None
    first, last = phases[0], phases[-1]
    return (
        f"under the same load, {last.label} keeps the median exposure at "
        f"{_exposure(last.p50)}, against {_exposure(first.p50)} with {first.label}"
    )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}s"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / (1024 * 1024):.1f} MiB"


def _elapsed(snap: DemoSnapshot) -> str:
    if snap.planned_s is None:
        return f"{snap.elapsed_s:.0f}s"
    return f"{snap.elapsed_s:.0f}s/{snap.planned_s:.0f}s"


class StepHandle:
    """Lets a step add what it found ("on port 5433") to its completion line."""

    def __init__(self) -> None:
        self.detail = ""


class DemoView(Protocol):
    def info(self, text: str) -> None: ...

    def error(self, text: str) -> None: ...

    def step(self, text: str) -> AbstractContextManager[StepHandle]: ...

    def live(self) -> AbstractContextManager[Callable[[DemoSnapshot], None]]: ...

    def comparison(self, result: Comparison) -> None: ...

    def exposure(self, phases: list[ExposurePhase]) -> None: ...


def make_view(console: Console | None = None) -> DemoView:
    console = console or Console(highlight=False)
    # A dumb terminal cannot redraw in place: lines serve it better than a live table.
    interactive = console.is_terminal and not console.is_dumb_terminal
    return RichDemoView(console) if interactive else PlainDemoView()


# -- plain lines ----------------------------------------------------------------------


def plain_line(snap: DemoSnapshot) -> str:
    parts = [f"[{_elapsed(snap)}] {snap.phase}:", f"shipped={snap.shipped}"]
    if snap.status_error:
        parts.append(f"status unavailable ({snap.status_error})")
    for entry in snap.connectors:
        parts += [
            f"{entry.get('name')}={entry.get('state')}",
            f"pending={entry.get('pending_files')}",
            f"last_shipped={entry.get('last_shipped')}",
            f"last_applied={entry.get('last_applied')}",
            f"exposure={_seconds(entry.get('rpo_exposure_s'))}"
            f"/rpo={_seconds(entry.get('rpo_target_s'))}",
            f"streaming={entry.get('streaming') or 'n/a'}",
        ]
    replay = snap.replay
    parts += [
        "|",
        f"primary_lsn={replay.primary_lsn or 'n/a'}",
        f"standby_replayed={replay.standby_lsn or 'n/a'}",
        f"behind={_mib(replay.behind_bytes)}",
    ]
    return " ".join(parts)


class PlainDemoView:
    def _print(self, text: str) -> None:
        # Flushed per line: the reader is often a log tailer or a test waiting on it.
        print(text, flush=True)

    def info(self, text: str) -> None:
        self._print(text)

    def error(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    @contextmanager
    def step(self, text: str) -> Iterator[StepHandle]:
        handle = StepHandle()
        started = time.monotonic()
        self._print(f"{text} ...")
        try:
            yield handle
        except BaseException:
            self._print(f"failed after {time.monotonic() - started:.1f}s: {text}")
            raise
        detail = f": {handle.detail}" if handle.detail else ""
        self._print(f"done in {time.monotonic() - started:.1f}s: {text}{detail}")

    @contextmanager
    def live(self) -> Iterator[Callable[[DemoSnapshot], None]]:
        def update(snap: DemoSnapshot) -> None:
            self._print(plain_line(snap))

        yield update

    def comparison(self, result: Comparison) -> None:
        for what, primary, standby in result.rows:
            mark = "same" if primary == standby else "DIFFERENT"
            self._print(f"compare {what}: primary={primary} standby={standby} {mark}")
        self._print(_verdict(result))

    def exposure(self, phases: list[ExposurePhase]) -> None:
        for phase in phases:
            self._print(
                f"exposure {phase.label}: p50={_exposure(phase.p50)} "
                f"max={_exposure(phase.max)} readings={phase.readings} "
                f"streaming={phase.streaming_state} sync_mode={phase.sync_mode} "
                f"tps={_tps(phase.tps)}"
            )
        summary = exposure_summary(phases)
        if summary:
            self._print(summary)


def _verdict(result: Comparison) -> str:
    if result.matched:
        return (
            "verdict: MATCH - the standby holds every transaction pgbench committed on the primary"
        )
    if result.equal:
        return "verdict: NOTHING TO COMPARE - pgbench committed no transaction"
    return "verdict: MISMATCH - the standby differs from the primary"


# -- rich -----------------------------------------------------------------------------


def _stream_flushed(snap: DemoSnapshot) -> str | None:
    """Where the standby has flushed streamed WAL, once streaming is on (the status
    table shows the streaming state and the synchronous mode)."""
    for entry in snap.connectors:
        if entry.get("streaming") not in (None, "off"):
            return str(entry.get("stream_flush_lsn") or "n/a")
    return None


def render_snapshot(snap: DemoSnapshot) -> RenderableType:
    header = Text.assemble((snap.phase, "bold cyan"), f"  {_elapsed(snap)}")
    parts: list[RenderableType] = [header]
    if snap.connectors:
        parts.append(build_status_table([ConnectorStatus.from_json(e) for e in snap.connectors]))
    if snap.status_error or not snap.connectors:
        reason = snap.status_error or "no connector reported yet"
        parts.append(Text(f"status unavailable: {reason}", style="dim"))
    replay = snap.replay
    flushed = _stream_flushed(snap)
    behind = replay.behind_bytes
    behind_text = _mib(behind)
    if behind is not None:
        behind_text += f" ({behind / WAL_SEGMENT_BYTES:.1f} segments)"
    parts.append(
        Text.assemble(
            "segments shipped to the DR site: ",
            (str(snap.shipped), "bold"),
            "\nprimary WAL at ",
            (replay.primary_lsn or "n/a", "bold"),
            *(("   streamed and flushed at the standby ", (flushed, "bold")) if flushed else ()),
            "   standby replayed ",
            (replay.standby_lsn or "not running yet", "bold"),
            "   behind ",
            (behind_text, "yellow" if behind else "green"),
        )
    )
    return Group(*parts)


class RichDemoView:
    def __init__(self, console: Console) -> None:
        self.console = console
        # Errors go to stderr like every other verb's; a separate console keeps them there.
        self._err = Console(stderr=True, highlight=False)

    def info(self, text: str) -> None:
        # Paths may contain [brackets]: never read as rich markup.
        self.console.print(Text(text))

    def error(self, text: str) -> None:
        self._err.print(Text(text, style="red"))

    @contextmanager
    def step(self, text: str) -> Iterator[StepHandle]:
        handle = StepHandle()
        started = time.monotonic()
        try:
            # Text, not markup: "[streaming]" or a path with brackets is shown as it is.
            with self.console.status(Text(text)):
                yield handle
        except BaseException:
            self.console.print(Text.assemble(("✗ ", "bold red"), text))
            raise
        detail = f" - {handle.detail}" if handle.detail else ""
        self.console.print(
            Text.assemble(
                ("✓ ", "green"), text, detail, (f"  ({time.monotonic() - started:.1f}s)", "dim")
            )
        )

    @contextmanager
    def live(self) -> Iterator[Callable[[DemoSnapshot], None]]:
        # No auto refresh: the caller's probe loop sets the pace, one frame per reading.
        with Live(console=self.console, auto_refresh=False, transient=False) as live:

            def update(snap: DemoSnapshot) -> None:
                live.update(render_snapshot(snap), refresh=True)

            yield update

    def comparison(self, result: Comparison) -> None:
        table = Table(title="primary vs standby", title_justify="left")
        table.add_column("")
        table.add_column("primary", justify="right")
        table.add_column("standby", justify="right")
        table.add_column("")
        for what, primary, standby in result.rows:
            same = primary == standby
            table.add_row(
                what,
                str(primary),
                str(standby),
                Text("same", style="green") if same else Text("DIFFERENT", style="bold red"),
            )
        self.console.print(table)
        style = "bold green" if result.matched else "bold red"
        self.console.print(Text(_verdict(result), style=style))

    def exposure(self, phases: list[ExposurePhase]) -> None:
        table = Table(
            title="RPO exposure under pgbench load, as `logship status` reported it",
            title_justify="left",
        )
        table.add_column("")
        table.add_column("exposure p50", justify="right")
        table.add_column("exposure max", justify="right")
        table.add_column("readings", justify="right")
        table.add_column("streaming")
        table.add_column("sync_mode")
        table.add_column("pgbench tps", justify="right")
        for phase in phases:
            table.add_row(
                phase.label,
                Text(_exposure(phase.p50), style="bold"),
                _exposure(phase.max),
                str(phase.readings),
                phase.streaming_state,
                phase.sync_mode,
                _tps(phase.tps),
            )
        self.console.print(table)
        summary = exposure_summary(phases)
        if summary:
            self.console.print(Text(summary, style="bold"))
