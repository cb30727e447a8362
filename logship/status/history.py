"""Lag history: the monitor's samples, downsampled into the catalog, and what they tell.

`HistorySink` stores one sample per connector per `[history] resolution`, and
what it stores is the worst exposure seen in that window rather than the last
one: a ten-second breach between two samples must still show up a week later.
A change of state is stored the moment it is seen, so a breach's start and end
are exact to one monitor tick. Samples older than `[history] keep` are pruned.

The rest is pure: `summarize` answers `status --since` (worst exposure, time in
breach, the breaches), `state_changes` turns samples into dashboard events.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from logship.catalog.store import Catalog, NewSample
from logship.config.model import HistorySection
from logship.logs import event
from logship.status.figures import iso_utc
from logship.status.model import ConnectorStatus
from logship.status.state import State

log = logging.getLogger("logship.history")

PRUNE_EVERY_S = 60.0
# Samples kept in memory while the catalog refuses writes (busy, restarting):
# 1000 is hours of history for a handful of connectors, and bounded.
MAX_UNWRITTEN = 1000
# How long past its own time a sample still describes the connector. The monitor
# samples every second, and downsampling spaces stored samples at most two
# resolution windows apart; longer than that, nothing was sampling (daemon
# stopped), and that stretch is reported as not covered rather than guessed.
HOLD_SLACK_S = 5.0


def hold_for(resolution: float) -> float:
    return 2 * resolution + HOLD_SLACK_S


class SampleRow(Protocol):
    """What the computations need from a sample (`LagSample` and `NewSample` fit)."""

    @property
    def connector(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def state(self) -> str: ...
    @property
    def rpo_exposure_s(self) -> float | None: ...
    @property
    def transport_lag_s(self) -> float | None: ...


def sample_of(status: ConnectorStatus, at: float) -> NewSample:
    return NewSample(
        connector=status.name,
        at=at,
        state=str(status.state),
        rpo_exposure_s=status.rpo_exposure_s,
        transport_lag_s=status.transport_lag_s,
        apply_lag_s=status.apply_lag_s,
        pending_files=status.pending_files,
        pending_bytes=status.pending_bytes,
    )


def severity(row: SampleRow) -> float:
    """How much would be lost: the exposure, else (nothing durable yet) the transport lag.

    The same fallback `classify` uses, so the sample kept is the one that set the state.
    """
    if row.rpo_exposure_s is not None:
        return row.rpo_exposure_s
    if row.transport_lag_s is not None:
        return row.transport_lag_s
    return -math.inf


# -- storing -------------------------------------------------------------------------------


@dataclass
class _Window:
    bucket: int
    worst: NewSample


class HistorySink:
    """A monitor `StatusSink` writing downsampled lag samples to the catalog."""

    def __init__(self, catalog: Catalog, settings: HistorySection) -> None:
        self._catalog = catalog
        self._resolution = settings.resolution
        self._keep = settings.keep
        self._states: dict[str, str] = {}
        self._windows: dict[str, _Window] = {}
        self._unwritten: list[NewSample] = []
        self._pruned_at: float | None = None

    def observe(self, statuses: Sequence[ConnectorStatus], now: float) -> None:
        for status in statuses:
            try:
                self._unwritten.extend(self._take(sample_of(status, now)))
            except (TypeError, ValueError) as exc:  # one connector's sample, not all
                event(
                    log,
                    logging.ERROR,
                    "history: sample skipped",
                    connector=status.name,
                    error=str(exc),
                )
        self._write()
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_S:
            self._catalog.prune_samples(now - self._keep)
            self._pruned_at = now

    def close(self) -> None:
        # The open windows hold the worst of the last seconds: keep them.
        self._unwritten.extend(window.worst for window in self._windows.values())
        self._windows.clear()
        try:
            self._write()
        except Exception as exc:  # stopping must go on; the loss is logged
            event(log, logging.ERROR, "history: last samples not stored", error=str(exc))

    def _take(self, sample: NewSample) -> list[NewSample]:
        """What to store now for this sample of one connector."""
        name = sample.connector
        window = self._windows.get(name)
        due: list[NewSample] = []
        if self._states.get(name) != sample.state:
            if window is not None:
                due.append(window.worst)
                del self._windows[name]
            self._states[name] = sample.state
            due.append(sample)
            return due
        bucket = math.floor(sample.at / self._resolution)
        if window is not None and window.bucket != bucket:
            due.append(window.worst)
            window = None
        if window is None:
            self._windows[name] = _Window(bucket, sample)
        elif severity(sample) > severity(window.worst):  # a tie keeps the earlier one
            window.worst = sample
        return due

    def _write(self) -> None:
        if not self._unwritten:
            return
        try:
            self._catalog.add_samples(self._unwritten)
        except Exception:
            # Retried on the next tick: a busy catalog must not punch holes in history.
            del self._unwritten[:-MAX_UNWRITTEN]
            raise
        self._unwritten.clear()


# -- status --since ------------------------------------------------------------------------


def in_breach(row: SampleRow, rpo_target_s: float) -> bool:
    # `down` outranks `breach` in the state, yet the RPO can be exceeded meanwhile.
    exposure = row.rpo_exposure_s
    return row.state == State.BREACH or (exposure is not None and exposure > rpo_target_s)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class Breach:
    """A stretch of time over the RPO, clipped to the window asked about."""

    start: float
    end: float | None  # None: still in breach at the latest sample
    peak_exposure_s: float | None
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "duration_s": _rounded(self.duration_s),
            "peak_exposure_s": _rounded(self.peak_exposure_s),
        }


@dataclass(frozen=True)
class WindowSummary:
    """What `status --since` adds per connector."""

    since: float
    until: float
    samples: int  # stored samples taken inside the window
    covered_s: float  # how much of the window some sample describes
    worst_exposure_s: float | None
    worst_exposure_at: float | None
    breach_s: float | None  # None: nothing at all was measured
    breaches: tuple[Breach, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "from": iso_utc(self.since),
            "to": iso_utc(self.until),
            "window_s": _rounded(self.until - self.since),
            "samples": self.samples,
            "covered_s": _rounded(self.covered_s),
            "worst_exposure_s": _rounded(self.worst_exposure_s),
            "worst_exposure_at": iso_utc(self.worst_exposure_at),
            "breach_s": _rounded(self.breach_s),
            "breaches": [breach.to_json() for breach in self.breaches],
        }


@dataclass
class _Open:
    start: float
    end: float
    peak: float | None


def _peak(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)


def summarize(
    samples: Iterable[SampleRow],
    *,
    since: float,
    now: float,
    rpo_target_s: float,
    hold: float,
    current: SampleRow | None = None,
) -> WindowSummary:
    """Worst exposure, time in breach and the breaches between `since` and `now`.

    Each sample describes the connector from its own time until the next sample,
    for at most `hold` seconds. Pass the samples from `since - hold` on so a
    breach already running when the window opens is counted from the start.
    `current` is a measurement taken at `now` (not stored yet): it shows whether
    a breach is still going on.
    """
    rows: list[SampleRow] = sorted((r for r in samples if r.at <= now), key=lambda r: r.at)
    stored = sum(1 for r in rows if r.at >= since)
    if current is not None:
        rows.append(current)
    worst: tuple[float, float] | None = None  # (exposure, at); the first of equals wins
    for row in rows:
        exposure = row.rpo_exposure_s
        if row.at >= since and exposure is not None and (worst is None or exposure > worst[0]):
            worst = (exposure, row.at)

    covered = 0.0
    breaches: list[Breach] = []
    run: _Open | None = None

    def close(ongoing: bool) -> None:
        nonlocal run
        if run is not None and (run.end > since or ongoing):
            start = max(run.start, since)
            end = None if ongoing else min(run.end, now)
            breaches.append(Breach(start, end, run.peak, max(0.0, (end or now) - start)))
        run = None

    for index, row in enumerate(rows):
        following = rows[index + 1].at if index + 1 < len(rows) else now
        end = min(following, row.at + hold)
        covered += max(0.0, min(end, now) - max(row.at, since))
        if not in_breach(row, rpo_target_s):
            close(ongoing=False)
            continue
        if run is not None and run.end < row.at:  # a hole in the history: not one breach
            close(ongoing=False)
        if run is None:
            run = _Open(row.at, end, row.rpo_exposure_s)
        else:
            run.end, run.peak = end, _peak(run.peak, row.rpo_exposure_s)
    if run is not None:
        close(ongoing=bool(rows) and now - rows[-1].at <= hold)

    return WindowSummary(
        since=since,
        until=now,
        samples=stored,
        covered_s=covered,
        worst_exposure_s=worst[0] if worst else None,
        worst_exposure_at=worst[1] if worst else None,
        breach_s=sum(b.duration_s for b in breaches) if rows else None,
        breaches=tuple(breaches),
    )


def window_summary(
    catalog: Catalog | None,
    status: ConnectorStatus,
    *,
    since: float,
    now: float,
    resolution: float,
) -> WindowSummary:
    """`summarize` over the catalog's samples plus the status just measured."""
    hold = hold_for(resolution)
    rows: Sequence[SampleRow] = []
    current = None
    if catalog is not None:  # without a catalog nothing was ever measured
        rows = catalog.samples(status.name, since - hold)
        current = sample_of(status, now)
    return summarize(
        rows,
        since=since,
        now=now,
        rpo_target_s=status.rpo_target_s,
        hold=hold,
        current=current,
    )


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Something worth a line in the dashboard. Kinds so far: "state", "promote"."""

    at: float
    connector: str
    kind: str
    message: str
    state: str | None = None  # the state entered, for colouring


def state_changes(samples: Iterable[SampleRow]) -> list[Event]:
    """A connector's state changes, oldest first.

    A connector's first sample is only a baseline: what came before it is unknown.
    """
    last: dict[str, str] = {}
    found: list[Event] = []
    for row in sorted(samples, key=lambda r: r.at):
        previous = last.get(row.connector)
        last[row.connector] = row.state
        if previous is None or previous == row.state:
            continue
        message = f"{previous} → {row.state}"
        if row.rpo_exposure_s is not None:
            message += f", exposure {row.rpo_exposure_s:.1f}s"
        found.append(Event(row.at, row.connector, "state", message, row.state))
    return found


def events(catalog: Catalog, since: float) -> list[Event]:
    """Events since `since`, oldest first: state changes read off the samples, and
    what the journal recorded (a promote)."""
    recorded = [Event(e.at, e.connector, e.kind, e.message) for e in catalog.journal(since)]
    return sorted(state_changes(catalog.samples(None, since)) + recorded, key=lambda e: e.at)
