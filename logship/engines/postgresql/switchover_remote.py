"""Running a switchover step at a site: here in-process, there through
`logship switchover-step` over SSH. Answers from the other site are checked
field by field before anything uses them."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from logship.config.model import Config
from logship.engines.postgresql import switchover_steps as steps
from logship.engines.postgresql import walnames
from logship.errors import EXIT_REFUSED, OperationFailed, SafetyRefusal
from logship.jsonin import load_object

_LSN = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")
_SYSTEM_ID = re.compile(r"^[0-9]{1,20}$")
ANSWER_LIMIT = 64 * 1024


class Answer:
    """One step's JSON answer; each accessor validates what it returns."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self._raw = raw
        self._where = where

    def _bad(self, key: str, why: str) -> OperationFailed:
        return OperationFailed(f"{self._where}: answer field {key!r} {why}")

    def flag(self, key: str) -> bool:
        value = self._raw.get(key)
        if not isinstance(value, bool):
            raise self._bad(key, "is not true/false")
        return value

    def lsn(self, key: str) -> str:
        value = self._raw.get(key)
        if not isinstance(value, str) or not _LSN.match(value):
            raise self._bad(key, "is not an LSN")
        return value

    def maybe_lsn(self, key: str) -> str | None:
        return None if self._raw.get(key) is None else self.lsn(key)

    def number(self, key: str, low: int = 0, high: int = 2**63) -> int:
        value = self._raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(key, f"is not a whole number in [{low}, {high}]")
        return value

    def maybe_number(self, key: str, low: int = 0, high: int = 2**63) -> int | None:
        return None if self._raw.get(key) is None else self.number(key, low, high)

    def moment(self, key: str) -> float:
        value = self._raw.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self._bad(key, "is not a time")
        return float(value)

    def segment(self, key: str) -> str:
        value = self._raw.get(key)
        if not isinstance(value, str) or walnames.parse(value) is None:
            raise self._bad(key, "is not a WAL segment name")
        return value

    def segments(self, key: str) -> list[str]:
        value = self._raw.get(key)
        if not isinstance(value, list) or len(value) > 1_000_000:
            raise self._bad(key, "is not a list of WAL names")
        if any(not isinstance(v, str) or walnames.parse(v) is None for v in value):
            raise self._bad(key, "holds a name that is not a WAL segment name")
        return value

    def system_id(self, key: str) -> str:
        value = self._raw.get(key)
        if not isinstance(value, str) or not _SYSTEM_ID.match(value):
            raise self._bad(key, "is not a system identifier")
        return value

    def text(self, key: str, limit: int = 300) -> str:
        value = self._raw.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "is not text")
        return value[:limit]


#: step name -> its in-process function (config, connector, **arguments)
LOCAL: dict[str, Callable[..., dict[str, Any]]] = {
    "facts": steps.facts,
    "reach": steps.reach,
    "stop": steps.stop,
    "restart": steps.restart,
    "ship-final": steps.ship_final,
    "unship-final": steps.unship_final,
    "replayed": steps.replayed,
    "promote": steps.promote,
    "follow": steps.follow,
    "fence": steps.fence_old_primary,
}

#: argument name -> the switchover-step option carrying it
OPTIONS = {
    "target": "--target",
    "since_lsn": "--since-lsn",
    "lsn": "--lsn",
    "segment": "--segment",
    "timeout": "--timeout",
    "timeline": "--timeline",
}


def argv_for(step: str, connector: str, arguments: dict[str, Any]) -> list[str]:
    argv = ["switchover-step", connector, step]
    for key, value in arguments.items():
        if key == "dry_run":
            if value:
                argv.append("--dry-run")
        else:
            argv += [OPTIONS[key], str(value)]
    return argv


class StepRunner:
    """Runs steps at either site of one connector."""

    def __init__(self, config: Config, connector: str) -> None:
        self.config = config
        self.connector = connector

    def call(self, site: str, step: str, *, wait_s: float = 60, **arguments: Any) -> Answer:
        where = f"{step} at {site}"
        if site == self.config.this_site:
            return Answer(LOCAL[step](self.config, self.connector, **arguments), where)
        from logship.ship.sftp import SftpTransport

        target = self.config.sites[site]
        transport = SftpTransport(target)
        try:
            status, out, err = transport.run_command(
                [*target.command, *argv_for(step, self.connector, arguments)],
                timeout=wait_s + 30,
                limit=ANSWER_LIMIT,
            )
        finally:
            transport.close()
        if status != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            message = lines[-1][:500] if lines else f"exited {status}"
            error = SafetyRefusal if status == EXIT_REFUSED else OperationFailed
            raise error(f"{where}: {message}")
        try:
            return Answer(load_object(out, where, ANSWER_LIMIT), where)
        except ValueError as exc:
            raise OperationFailed(str(exc)) from None
