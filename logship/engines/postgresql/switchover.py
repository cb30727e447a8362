"""`logship switchover`: a planned role swap with zero data loss, run at either site.

Gates first (both databases up, the standby caught up within a bound, no gap,
SSH both ways); then: stop the primary cleanly, ship its WAL up to the shutdown
checkpoint, prove the standby replayed past that checkpoint (LSN against LSN),
promote, start the old primary as a standby of the new one, and let the daemons
turn the shipping around. A failed step stops in a state it names, with one
primary and the next command to run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from logship.config.model import Config
from logship.engines.postgresql import walnames
from logship.engines.postgresql.promote import Step, Verdict
from logship.engines.postgresql.switchover_remote import Answer, StepRunner
from logship.engines.postgresql.switchover_steps import two_sided
from logship.errors import LogshipError, OperationFailed, SafetyRefusal, UsageError

#: the most WAL the standby may be behind before the switchover starts: all of it
#: is shipped and replayed while writes are stopped
DEFAULT_MAX_BEHIND = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 120.0
MAX_TLI = 2**32 - 1


@dataclass(frozen=True)
class SwitchoverOptions:
    dry_run: bool = False
    timeout: float = DEFAULT_TIMEOUT_S
    max_behind: int = DEFAULT_MAX_BEHIND


@dataclass
class SwitchoverOutcome:
    dry_run: bool
    old_primary: str
    new_primary: str
    #: from the old primary's stop to the new primary's first commit (at most)
    outage_s: float | None = None
    new_timeline: int | None = None
    steps: list[Step] = field(default_factory=list)


class SwitchoverStopped(OperationFailed):
    """A step failed; the message names the state left and the next command."""


class SwitchoverRefused(SafetyRefusal):
    pass


class Switchover:
    def __init__(
        self,
        config: Config,
        name: str,
        options: SwitchoverOptions,
        on_step: Callable[[Step], None],
        runner: StepRunner | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        connector, self.here, _ = two_sided(config, name)
        if connector.streaming.enabled:
            raise UsageError(
                f"connector {name!r} streams WAL: switchover handles archive shipping only "
                "so far; turn [streaming] off for the switchover"
            )
        assert connector.primary_side is not None
        self.name = name
        self.config = config
        self.primary = connector.primary_side
        self.standby = connector.site
        for side in (self.primary, self.standby):
            if config.sites[side].restricted:
                raise UsageError(
                    f"site {side} is restricted (a site-gate key): a switchover runs its "
                    "steps at both sites with logship's full command"
                )
        self.options = options
        self._on_step = on_step
        self._steps = runner or StepRunner(config, name)
        self._monotonic = monotonic
        self.outcome = SwitchoverOutcome(options.dry_run, self.primary, self.standby)

    def _step(self, name: str, verdict: Verdict, detail: str) -> None:
        step = Step(name, verdict, detail)
        self.outcome.steps.append(step)
        self._on_step(step)

    def _call(self, site: str, step: str, **arguments: object) -> Answer:
        return self._steps.call(site, step, wait_s=self.options.timeout, **arguments)

    # -- gates ----------------------------------------------------------------------

    def _gates(self) -> tuple[Answer, Answer]:
        problems: list[str] = []
        primary = self._side_facts(self.primary, want_recovery=False, problems=problems)
        standby = self._side_facts(self.standby, want_recovery=True, problems=problems)
        there = self.standby if self.here == self.primary else self.primary
        try:
            self._call(there, "reach", target=self.here)
            self._step(
                "ssh", Verdict.OK, f"{self.here} reaches {there}, and {there} reaches {self.here}"
            )
        except LogshipError as exc:
            problems.append(f"ssh: {exc}")
            self._step("ssh", Verdict.REFUSED, str(exc))
        if primary is not None and standby is not None:
            self._gate_caught_up(primary, standby, problems)
        if problems:
            raise SwitchoverRefused(
                f"switchover of {self.name} refused, nothing changed: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            )
        assert primary is not None and standby is not None
        return primary, standby

    def _side_facts(self, site: str, *, want_recovery: bool, problems: list[str]) -> Answer | None:
        role = "standby" if want_recovery else "primary"
        try:
            facts = self._call(site, "facts")
        except LogshipError as exc:
            problems.append(f"{site}: {exc}")
            self._step(f"{role} {site}", Verdict.REFUSED, str(exc))
            return None
        if not facts.flag("up"):
            why = f"its database does not answer: {facts.text('error')}"
            problems.append(f"{site}: {why}")
            self._step(f"{role} {site}", Verdict.REFUSED, why)
            return None
        if facts.flag("in_recovery") != want_recovery:
            why = "is in recovery (a standby)" if not want_recovery else "is not in recovery"
            problems.append(f"{site}: {why}")
            self._step(f"{role} {site}", Verdict.REFUSED, f"its database {why}")
            return None
        self._step(f"{role} {site}", Verdict.OK, f"up, at {facts.lsn('lsn')}")
        return facts

    def _gate_caught_up(self, primary: Answer, standby: Answer, problems: list[str]) -> None:
        if primary.system_id("system_identifier") != standby.system_id("system_identifier"):
            problems.append("the two databases are not copies of one another")
            self._step("same database", Verdict.REFUSED, "different system identifiers")
            return
        behind = walnames.lsn_to_int(primary.lsn("lsn")) - walnames.lsn_to_int(standby.lsn("lsn"))
        bound = self.options.max_behind
        if behind > bound:
            problems.append(f"the standby is {behind} bytes behind (bound {bound})")
            self._step("caught up", Verdict.REFUSED, f"{behind} bytes behind, more than {bound}")
        else:
            self._step("caught up", Verdict.OK, f"{max(behind, 0)} bytes behind (bound {bound})")
        plan = self._call(self.primary, "ship-final", since_lsn=standby.lsn("lsn"), dry_run=True)
        missing = plan.segments("missing")
        if missing:
            problems.append(f"gap: {missing[0]} is neither at {self.standby} nor in pg_wal")
            self._step(
                "no gap", Verdict.REFUSED, f"{len(missing)} segment(s) missing, first {missing[0]}"
            )
        else:
            self._step(
                "no gap",
                Verdict.OK,
                f"{len(plan.segments('present'))} segment(s) at {self.standby}, "
                f"{len(plan.segments('shipped'))} to ship from pg_wal at the stop",
            )

    # -- the swap -------------------------------------------------------------------

    def run(self) -> SwitchoverOutcome:
        _, standby = self._gates()
        self._step(
            "base backup",
            Verdict.INFO,
            f"the new direction ({self.standby} -> {self.primary}) needs its own base "
            f"backups: after the swap, `logship base-backup {self.name}` at {self.standby} "
            "(its schedules run there from now on)",
        )
        if self.options.dry_run:
            for name, what in (
                ("stop", f"stop the primary at {self.primary} cleanly"),
                ("ship", f"ship its WAL up to the shutdown checkpoint to {self.standby}"),
                ("replayed", f"prove the standby at {self.standby} replayed past that checkpoint"),
                ("promote", f"promote {self.standby}"),
                ("follow", f"start {self.primary} as a standby of {self.standby}"),
                ("turn around", f"ship {self.standby} -> {self.primary}"),
            ):
                self._step(name, Verdict.WOULD, what)
            return self.outcome
        started = self._monotonic()
        stopped = self._stop()
        checkpoint = stopped.lsn("checkpoint_lsn")
        final_segment = stopped.segment("segment")
        self._ship_and_replay(standby.lsn("lsn"), checkpoint, final_segment)
        promoted = self._promote()
        self.outcome.outage_s = self._monotonic() - started
        self.outcome.new_timeline = promoted.number("timeline", 1, MAX_TLI)
        self._step(
            "write outage",
            Verdict.OK,
            f"{self.outcome.outage_s:.1f} s from the stop of {self.primary} to the first "
            f"commit on {self.standby} (at most)",
        )
        self._follow(promoted)
        return self.outcome

    def _stop(self) -> Answer:
        try:
            stopped = self._call(self.primary, "stop")
        except LogshipError as exc:
            raise SwitchoverStopped(
                f"stop failed: {exc}. State: {self.primary} may still be the primary, "
                f"{self.standby} is its standby. Next: check {self.primary}'s server log; "
                f"run `logship switchover {self.name}` again once it is up"
            ) from None
        self._step(
            "stop",
            Verdict.OK,
            f"{self.primary} shut down cleanly; its final checkpoint is at "
            f"{stopped.lsn('checkpoint_lsn')} on timeline {stopped.number('timeline', 1, MAX_TLI)}",
        )
        return stopped

    def _ship_and_replay(self, since: str, checkpoint: str, final_segment: str) -> None:
        try:
            shipped = self._call(self.primary, "ship-final", since_lsn=since, dry_run=False)
            self._step(
                "ship",
                Verdict.OK,
                f"{len(shipped.segments('shipped'))} segment(s) shipped from pg_wal up to "
                f"{final_segment} (holding the shutdown checkpoint)",
            )
            done = self._call(
                self.standby, "replayed", lsn=checkpoint, timeout=self.options.timeout
            )
            self._step(
                "replayed",
                Verdict.OK,
                f"{self.standby} replayed to {done.lsn('replay_lsn')}, past the final "
                f"checkpoint at {checkpoint}: nothing committed at {self.primary} is missing",
            )
        except LogshipError as exc:
            self._roll_back(exc, final_segment)

    def _roll_back(self, exc: LogshipError, final_segment: str) -> None:
        """Before a promote the old primary simply runs on: its last, partly written
        segment is taken back from the site (it writes the rest of it), and it starts."""
        try:
            self._call(self.primary, "unship-final", segment=final_segment)
            self._call(self.primary, "restart")
        except LogshipError as again:
            raise SwitchoverStopped(
                f"{exc}. Rolling back failed too: {again}. State: NO primary: {self.primary} "
                f"is stopped cleanly, {self.standby} is still its standby. Next: start "
                f"{self.primary} again (pg_ctl start at {self.primary}) and remove "
                f"{final_segment} from {self.standby}'s incoming folder if it is there"
            ) from None
        self._step("roll back", Verdict.OK, f"{self.primary} runs as the primary again")
        raise SwitchoverStopped(
            f"{exc}. State: {self.primary} is the primary again, {self.standby} its standby; "
            f"nothing was promoted. Next: fix the cause, then `logship switchover {self.name}`"
        )

    def _promote(self) -> Answer:
        try:
            promoted = self._call(self.standby, "promote", timeout=self.options.timeout)
        except LogshipError as exc:
            raise SwitchoverStopped(
                f"promote failed: {exc}. State: {self.primary} is stopped cleanly, and "
                f"{self.standby} may or may not be promoting (its PROMOTED marker stands). "
                f"Next: at {self.standby}, `select pg_is_in_recovery()`: if false, it is the "
                f"primary: run `logship standby follow {self.name}` at {self.primary}; if "
                f"true, start {self.primary} again (pg_ctl start) and remove the marker"
            ) from None
        self._step(
            "promote",
            Verdict.OK,
            f"{self.standby} is the primary on timeline "
            f"{promoted.number('timeline', 1, MAX_TLI)}; first commit done",
        )
        return promoted

    def _follow(self, promoted: Answer) -> None:
        try:
            self._call(self.primary, "follow")
        except LogshipError as exc:
            raise SwitchoverStopped(
                f"follow failed: {exc}. State: {self.standby} is the primary; {self.primary} "
                f"is stopped cleanly (it must not start as a primary). Next: "
                f"`logship standby follow {self.name}` at {self.primary}"
            ) from None
        self._step("follow", Verdict.OK, f"{self.primary} started as a standby of {self.standby}")
        self._step(
            "turn around",
            Verdict.OK,
            f"`logship run` at {self.standby} now ships {self.standby} -> {self.primary}, "
            f"at {self.primary} it ships nothing (each daemon follows the roles by itself); "
            f"the new timeline starts at {promoted.lsn('lsn')}",
        )
