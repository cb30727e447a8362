"""`schedules/*.toml` in the daemon: cron triggers, no overlap, catching up a missed run.

APScheduler keeps its plan in memory, so on its own a daemon that was down at
02:30 would never take that night's backup. The catalog keeps each job's next
planned time; at start-up a plan that passed while the daemon was down, within
the job's `misfire_grace`, runs once at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.date import DateTrigger

from logship.catalog.models import ScheduledJob
from logship.catalog.store import Catalog
from logship.config.model import Config, ScheduleConfig, SiteConfig
from logship.errors import first_line
from logship.jobs import run_action
from logship.logs import event
from logship.ship.transport import Transport

log = logging.getLogger("logship.schedule")

Clock = Callable[[], float]


def row_name(schedule: ScheduleConfig, connector: str) -> str:
    """The catalog row of one schedule's runs for one connector."""
    return f"{schedule.name}/{connector}"


def missed_run(row: ScheduledJob | None, schedule: ScheduleConfig, now: float) -> float | None:
    """The planned time of a run missed while no daemon ran, if still within grace."""
    if row is None or row.next_run_at is None or row.trigger != schedule.trigger_key:
        return None  # never planned, or planned under another cron or time zone
    planned = row.next_run_at
    if planned > now or now - planned > schedule.misfire_grace:
        return None
    if row.last_started_at is not None and row.last_started_at >= planned:
        return None  # it did start; a crash in the middle is not a miss
    return planned


class ScheduleRunner:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        scheduler: BaseScheduler,
        connect: Callable[[SiteConfig], Transport],
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        self._config = config
        self._stop = stop
        self._catalog = catalog
        self._scheduler = scheduler
        self._connect = connect
        self._clock = clock
        # A catch-up run and the cron run of one schedule must not overlap either;
        # APScheduler's max_instances only covers one job id.
        self._running = {name: threading.Lock() for name in config.schedules}
        # Jobs of different schedules wait for each other per connector: retention
        # deleting the backup or WAL a drill is replaying would fail the drill.
        self._connector_busy = {name: threading.Lock() for name in config.connectors}
        self._active: set[Transport] = set()
        self._active_changed = threading.Condition()

    def install(self) -> None:
        """Add every schedule to the (not yet started) scheduler, catch-ups included."""
        now = self._clock()
        for schedule in self._config.schedules.values():
            self._scheduler.add_job(
                self.run,
                schedule.trigger(),
                args=[schedule],
                id=f"schedule-{schedule.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(int(schedule.misfire_grace), 1),
            )
            missed = [
                planned
                for connector in schedule.connectors
                if (
                    planned := missed_run(
                        self._catalog.scheduled_job(row_name(schedule, connector)), schedule, now
                    )
                )
                is not None
            ]
            if missed:
                event(
                    log,
                    logging.WARNING,
                    "catching up a missed scheduled run",
                    job=schedule.name,
                    planned_at=datetime.fromtimestamp(min(missed), UTC).isoformat(),
                )
                self._scheduler.add_job(
                    self.run,
                    DateTrigger(datetime.fromtimestamp(now, UTC)),
                    args=[schedule],
                    id=f"catch-up-{schedule.name}",
                    misfire_grace_time=None,
                )

    def publish_next_runs(self) -> None:
        """Store each job's next planned time (call after the scheduler started)."""
        for schedule in self._config.schedules.values():
            for connector in schedule.connectors:
                self._update(schedule, connector)

    def _next_run_at(self, schedule: ScheduleConfig) -> float | None:
        # From the trigger, not the scheduler: a job finishing while the daemon
        # stops would wait for the scheduler's lock, which shutdown holds while it
        # waits for that very job.
        now = datetime.fromtimestamp(self._clock(), UTC)
        fire = schedule.trigger().get_next_fire_time(None, now)
        return fire.timestamp() if fire is not None else None

    def _update(self, schedule: ScheduleConfig, connector: str, **fields: object) -> None:
        self._catalog.update_schedule(
            row_name(schedule, connector),
            connector,
            schedule.action,
            trigger=schedule.trigger_key,
            next_run_at=self._next_run_at(schedule),
            **fields,
        )

    def abort(self, grace: float) -> None:
        """On daemon stop: give running jobs `grace` seconds, then cut their links.

        A base backup stops by itself between two writes (it watches the stop
        event); a drill waits on the site for up to an hour, so its SSH session is
        closed instead, and the drill at the site cleans up on the hangup.
        """
        with self._active_changed:
            self._active_changed.wait_for(lambda: not self._active, timeout=grace)
            for transport in list(self._active):
                transport.close()

    def run(self, schedule: ScheduleConfig) -> None:
        lock = self._running[schedule.name]
        if not lock.acquire(blocking=False):
            event(log, logging.WARNING, "scheduled job still running; skipped", job=schedule.name)
            return
        try:
            for connector in schedule.connectors:
                with self._connector_busy[connector]:
                    self._run_one(schedule, connector)
        finally:
            lock.release()

    def _run_one(self, schedule: ScheduleConfig, connector_name: str) -> None:
        self._update(schedule, connector_name, last_started_at=self._clock())
        event(
            log, logging.INFO, "scheduled job started", job=schedule.name, connector=connector_name
        )
        error: str | None = None
        try:
            connector = self._config.connector(connector_name)
            transport = self._connect(self._config.site_of(connector))
            with self._active_changed:
                self._active.add(transport)
            try:
                outcome = run_action(
                    schedule.action,
                    self._config,
                    connector_name,
                    transport,
                    self._catalog,
                    self._clock,
                    drill_after_backup=schedule.drill,
                    cancel=self._stop,
                )
            finally:
                with self._active_changed:
                    self._active.discard(transport)
                    self._active_changed.notify_all()
                transport.close()
        except Exception as exc:
            error = first_line(exc)
            event(
                log,
                logging.ERROR,
                "scheduled job failed",
                job=schedule.name,
                connector=connector_name,
                error=error,
            )
        else:
            event(
                log,
                logging.INFO,
                "scheduled job done",
                job=schedule.name,
                connector=connector_name,
                result=outcome.summary,
            )
        self._update(schedule, connector_name, last_finished_at=self._clock(), last_error=error)
