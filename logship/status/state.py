"""A connector's state, and how it follows from its figures (docs/reference/status-json.md)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from logship.status.figures import rounded

#: past this share of the RPO target a connector warns
WARN_FRACTION = 0.5


class State(StrEnum):
    OK = "ok"
    WARN = "warn"
    BREACH = "breach"
    DOWN = "down"


def classify(
    *,
    rpo_target_s: float,
    rpo_exposure_s: float | None,
    transport_lag_s: float | None,
    site_reachable: bool | None,
    has_gap: bool = False,
) -> State:
    """`down` > `breach` > `warn` > `ok`: the order docs/reference/status-json.md
    gives the states in."""
    if site_reachable is False:
        return State.DOWN
    exposure = rpo_exposure_s
    if exposure is None and transport_lag_s:
        # Nothing is durable at the site yet, so at least everything since the
        # oldest pending file would be lost: that age is the exposure.
        exposure = transport_lag_s
    if exposure is not None and exposure > rpo_target_s:
        return State.BREACH
    if exposure is not None and exposure > WARN_FRACTION * rpo_target_s:
        return State.WARN
    # Replay stops at a gap and the exposure only grows from here on: say so now.
    if has_gap:
        return State.WARN
    return State.OK


def measured_fields(
    *,
    name: str,
    kind: str,
    site: str,
    rpo_target_s: float,
    rpo_exposure_s: float | None,
    transport_lag_s: float | None,
    site_reachable: bool | None,
    has_gap: bool = False,
) -> dict[str, Any]:
    """The fields every engine's status starts with: who it is, its state and the
    figures the state follows from, rounded as `status --json` shows them."""
    return {
        "name": name,
        "kind": kind,
        "site": site,
        "state": classify(
            rpo_target_s=rpo_target_s,
            rpo_exposure_s=rpo_exposure_s,
            transport_lag_s=transport_lag_s,
            site_reachable=site_reachable,
            has_gap=has_gap,
        ),
        "rpo_target_s": float(rpo_target_s),
        "rpo_exposure_s": rounded(rpo_exposure_s),
        "transport_lag_s": rounded(transport_lag_s),
    }
