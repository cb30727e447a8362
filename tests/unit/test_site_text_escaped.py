"""Text that came from the site (errors, events) reaches the terminal escaped:
a terminal escape sequence in it is shown, never obeyed."""

from __future__ import annotations

import io

from rich.console import Console

from logship.status.history import Event
from logship.status.model import failed_status
from logship.ui.dashboard_view import DashboardData, DashboardView
from logship.ui.status_table import build_status_table

HOSTILE = "boom\x1b]0;owned\x07\x1b[2J\x1b[31m\u202eevil\r\n"


def _status() -> object:
    status = failed_status(name="main", kind="postgresql", site="dr", rpo_target_s=60, error="x")
    return status.__class__(
        **{
            **status.__dict__,
            "site_error": HOSTILE,
            "standby_error": HOSTILE,
            "drill_state": "failed",
            "drill_error": HOSTILE,
            "last_job": "verify",
            "last_job_error": HOSTILE,
            "verify_error": HOSTILE,
        }
    )


def _render(renderable: object) -> str:
    out = io.StringIO()
    # A real terminal's console: styles on, so only data could bring raw escapes.
    Console(file=out, width=200, force_terminal=True, color_system=None).print(renderable)
    return out.getvalue()


def _raw_controls(text: str) -> set[str]:
    return {c for c in text if c in "\x1b\x07\r\u202e"}


def test_status_table_escapes_site_text() -> None:
    text = _render(build_status_table([_status()]))  # type: ignore[list-item]
    assert not _raw_controls(text)
    assert "\\x1b" in text


def test_dashboard_escapes_site_text_and_events() -> None:
    event = Event(at=1.0, connector="main", kind="state", message=HOSTILE, state="down")
    view = DashboardView(DashboardData(now=2.0, statuses=[_status()], events=[event]))  # type: ignore[list-item]
    text = _render(view)
    assert not _raw_controls(text)
    assert "\\x1b" in text
