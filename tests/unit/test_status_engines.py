"""The status package asks a connector's engine for its status and for why its
figures are unknown; it never tests the kind itself. The JSON is the fields."""

from __future__ import annotations

from dataclasses import fields, replace
from types import SimpleNamespace
from typing import Any

import pytest

from logship.status import monitor
from logship.status.model import ConnectorStatus, Gap, failed_status
from logship.status.state import State
from logship.ui import status_table


def _status(name: str, kind: str = "toy") -> ConnectorStatus:
    return replace(
        failed_status(name=name, kind=kind, site="dr", rpo_target_s=60, error="x"),
        state=State.OK,
        site_error=None,
    )


class ToyEngine:
    """An engine of a kind no logship module knows about."""

    kind = "toy"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float, bool]] = []

    def status(
        self, connector: Any, catalog: Any, now: float, *, remember: bool
    ) -> ConnectorStatus:
        if connector.name == "broken":
            raise RuntimeError("rows unreadable")
        self.calls.append((connector.name, catalog, now, remember))
        return replace(_status(connector.name), sync_generation=7)

    def null_reasons(self, status: ConnectorStatus) -> list[str]:
        return [f"toy figure of {status.name} unknown"]


class Config:
    def connector(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, kind="toy", site="dr", rpo=60.0)


def test_the_monitor_takes_each_status_from_the_connectors_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = ToyEngine()
    asked: list[str] = []

    def engine_for(kind: str) -> ToyEngine:
        asked.append(kind)
        return engine

    monkeypatch.setattr(monitor, "engine_for", engine_for)
    catalog = object()
    statuses = monitor.collect_statuses(
        Config(),  # type: ignore[arg-type]
        catalog,  # type: ignore[arg-type]
        ["a", "broken", "b"],
        100.0,
        remember=True,
    )
    assert asked == ["toy", "toy", "toy"]
    assert engine.calls == [("a", catalog, 100.0, True), ("b", catalog, 100.0, True)]
    assert [(s.name, s.state, s.sync_generation) for s in statuses] == [
        ("a", State.OK, 7),
        ("broken", State.DOWN, None),
        ("b", State.OK, 7),
    ]
    # An engine that fails costs only its own connector, shown down with why.
    assert statuses[1].site_error == "status could not be computed: rows unreadable"


def test_unknown_figures_are_explained_by_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_table, "engine_for", lambda kind: ToyEngine())
    no_catalog = _status("a")
    assert status_table.null_reasons(no_catalog) == [
        "no catalog yet: start `logship run` at the primary site",
        "toy figure of a unknown",
    ]
    counted = replace(no_catalog, pending_files=0, pending_bytes=0)
    assert status_table.null_reasons(counted) == ["toy figure of a unknown"]


def test_a_kind_this_logship_does_not_know_gets_the_shared_reason_only() -> None:
    # A `status --json` from another logship, shown by the demo's view.
    assert status_table.null_reasons(_status("a", kind="no-such-kind")) == [
        "no catalog yet: start `logship run` at the primary site"
    ]


def test_the_json_is_every_field_in_order_and_reads_back() -> None:
    status = replace(
        _status("a"),
        state=State.WARN,
        gap=Gap(missing="000000010000000000000003", segment_number=3, after="x"),
        consistency_point="p-1",
    )
    data = status.to_json()
    assert list(data) == [f.name for f in fields(ConnectorStatus)]
    assert data["state"] == "warn" and type(data["state"]) is str
    assert data["gap"] == {"missing": "000000010000000000000003", "segment_number": 3, "after": "x"}
    assert ConnectorStatus.from_json(data) == status
    assert ConnectorStatus.from_json(_status("b").to_json()).gap is None
