"""The standby's replay rate, from two samples of its replay position."""

from __future__ import annotations

from logship.engines.postgresql import walnames

RATE_SMOOTHING = 0.3


def replay_rate(
    previous_lsn: str | None,
    previous_at: float | None,
    previous_rate: float | None,
    lsn: str | None,
    at: float | None,
) -> float | None:
    """Bytes/s the standby replayed between two samples, smoothed.

    Only samples in which replay moved count: a caught-up standby replays
    nothing, which says nothing about how fast it can replay.
    """
    if None in (previous_lsn, previous_at, lsn, at):
        return previous_rate
    elapsed = at - previous_at  # type: ignore[operator]
    moved = walnames.lsn_to_int(lsn) - walnames.lsn_to_int(previous_lsn)  # type: ignore[arg-type]
    if elapsed <= 0 or moved <= 0:
        return previous_rate
    rate = moved / elapsed
    if previous_rate is None:
        return rate
    return (1 - RATE_SMOOTHING) * previous_rate + RATE_SMOOTHING * rate
