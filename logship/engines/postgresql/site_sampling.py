"""The PostgreSQL engine's look at its standbys from the primary, between shipping
rounds, over the site worker's connection: how far each standby has replayed (its
`standby status`, asked at the site over SSH: no database port crosses sites), the
replay rate, and the repair of segments the standby refused as corrupt.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from logship.catalog.models import FileState
from logship.catalog.store import Catalog
from logship.config.model import SiteConfig
from logship.durable import sha256_of
from logship.engines.postgresql import walnames
from logship.engines.postgresql.archive_wal import shipped_sha256
from logship.engines.postgresql.standby_status import StandbyAnswer, ask_standby_status
from logship.errors import shown_text
from logship.logs import event
from logship.ship.shipper import ship_file
from logship.ship.site_worker import ShipTarget
from logship.ship.transport import SiteRefused, Transport
from logship.spool import entry_for, kept_path, prune_kept

log = logging.getLogger("logship.ship")

SAMPLE_TIMEOUT = 20.0
#: restore-wal's refused note is a few hundred bytes; more is not read
NOTE_LIMIT = 64 * 1024
#: a file the site says it refused is shipped again at most once in this long: a
#: site that keeps saying so (or lies) cannot keep the shipping thread busy
RESHIP_EVERY_S = 300.0
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


class StandbySampler:
    """The standbys of `targets` (the PostgreSQL connectors one site worker ships),
    sampled every `sample_interval`; see `SiteSampler`."""

    def __init__(
        self,
        site: SiteConfig,
        targets: Sequence[ShipTarget],
        catalog: Catalog,
        clock: Callable[[], float],
        sample_interval: float,
        wake: Callable[[], None],
    ) -> None:
        self.site = site
        self.targets = list(targets)
        self.catalog = catalog
        self._clock = clock
        self._sample_interval = sample_interval
        self._wake = wake
        self._next_sample = 0.0
        #: `standby status` asked at the site on a helper thread: the answer takes
        #: a process start there (0.1-0.3 s, up to SAMPLE_TIMEOUT), which the
        #: next segment must not wait behind
        self._asker = ThreadPoolExecutor(1, thread_name_prefix=f"ask-{site.name}")
        self._asking: Future[list[StandbyAnswer]] | None = None
        self._sample_errors: dict[str, str | None] = {}
        #: per connector: files the standby refused that no kept copy can replace
        self._unrepairable: dict[str, str] = {}
        #: per connector: why the site's last answer was dropped (a malformed one)
        self._bad_answers: dict[str, str] = {}
        #: (connector, file) -> when it was last shipped again after a refusal
        self._reshipped_at: dict[tuple[str, str], float] = {}
        #: per connector: the last restored name the site gave that was never shipped
        self._unproven_restored: dict[str, str] = {}
        #: per connector: refused names the last answer listed beyond the cap
        self._refused_ignored: dict[str, int] = {}

    def sample(self, transport: Transport) -> bool:
        """Ask the site how the standby is doing, every `sample_interval`; record the
        answer once it is in (True then).

        Only the asking runs on the helper thread (on a channel of its own);
        the catalog, the spool and the SFTP session stay with this thread.
        """
        recorded = False
        asking = self._asking
        if asking is not None:
            if not asking.done():
                return False
            self._asking = None
            # A failure of the link (raised here) is handled as one of shipping.
            self._record_standby(transport, asking.result())
            self._next_sample = self._clock() + self._sample_interval
            recorded = True
        if self._clock() < self._next_sample:
            return recorded
        self._asking = self._asker.submit(self._ask_standby, transport)
        self._asking.add_done_callback(lambda _: self._wake())
        return recorded

    def problems(self) -> list[str]:
        return [*self._bad_answers.values(), *self._unrepairable.values()]

    def drop(self) -> None:
        # An ask in flight fails with the connection; its answer is not wanted.
        self._asking = None

    def close(self) -> None:
        self._asking = None
        self._asker.shutdown(wait=False)

    def _ask_standby(self, transport: Transport) -> list[StandbyAnswer]:
        return [
            ask_standby_status(
                transport, self.site.command, target.connector, self._clock, SAMPLE_TIMEOUT
            )
            for target in self.targets
        ]

    def _record_standby(self, transport: Transport, answers: list[StandbyAnswer]) -> None:
        for target, answer in zip(self.targets, answers, strict=True):
            self._note_answer(target, answer)
            try:
                self._record_facts(target, answer)
            except Exception as exc:
                # Only this connector's sample is lost: the link, the other
                # connectors and shipping go on (the answer was checked, so this
                # is a bug or a catalog failure, which the next sample retries).
                event(
                    log,
                    logging.ERROR,
                    "recording the standby's facts failed",
                    connector=target.connector,
                    error=shown_text(str(exc)),
                )
                continue
            # The SFTP link failing in here is a lost link, as in shipping.
            self._repair(transport, target, answer.facts.refused)

    def _note_answer(self, target: ShipTarget, answer: StandbyAnswer) -> None:
        connector = target.connector
        if answer.answered:
            self._sample_errors.pop(connector, None)
        else:
            self._warn_once(connector, answer.facts.error)
        if answer.bad is None:
            self._bad_answers.pop(connector, None)
        else:
            # Shown as the site's error: the link is fine, the answer is not.
            self._bad_answers[connector] = f"site {self.site.name}: {answer.bad}"
        ignored = answer.refused_ignored
        if ignored and self._refused_ignored.get(connector) != ignored:
            event(
                log,
                logging.WARNING,
                "refused names beyond the cap ignored",
                connector=connector,
                site=self.site.name,
                ignored=ignored,
            )
        self._refused_ignored[connector] = ignored

    def _record_facts(self, target: ShipTarget, answer: StandbyAnswer) -> None:
        facts = answer.facts
        previous = self.catalog.standby_progress(target.connector)
        rate = replay_rate(
            previous.replay_lsn if previous else None,
            previous.measured_at if previous else None,
            previous.replay_rate_bps if previous else None,
            facts.replay_lsn,
            facts.measured_at if facts.reachable else None,
        )
        measured: dict[str, object] = {"reachable": facts.reachable, "error": facts.error}
        if facts.reachable:
            # An unreachable standby keeps its last known position and heartbeat,
            # so its apply lag keeps growing instead of turning unknown.
            measured.update(
                in_recovery=facts.in_recovery,
                replay_lsn=facts.replay_lsn,
                heartbeat_at=facts.heartbeat_at,
                replay_timestamp=facts.replay_timestamp,
                measured_at=facts.measured_at,
                replay_rate_bps=rate,
            )
        last, last_at = facts.last_restored, facts.restored_at
        replayed = self._replayed_through(target, last, facts.replay_lsn)
        if replayed is not None:
            last, last_at = replayed, facts.measured_at
        self.catalog.record_restored(target.connector, last, last_at, self._clock(), **measured)
        restored = self._proven_restored(target, last)
        if restored is not None:
            prune_kept(target.spool_dir, restored, target.keep_bytes)

    def _replayed_through(
        self, target: ShipTarget, last_restored: str | None, replay_lsn: str | None
    ) -> str | None:
        """The last shipped segment the standby has replayed in full, when it is past
        what restore-wal last fetched: a streaming standby reads new WAL from the
        stream, not through restore-wal, and its shipped copies are applied all the
        same. On the timeline of restore-wal's last file; None otherwise."""
        if last_restored is None or replay_lsn is None:
            return None
        fetched = walnames.parse(last_restored)
        row = self.catalog.file(target.connector, last_restored)
        if fetched is None or fetched.kind is not walnames.WalKind.SEGMENT or row is None:
            return None
        number = walnames.lsn_to_int(replay_lsn) // row.size - 1
        name = walnames.segment_name(fetched.timeline, number, row.size)
        if name <= last_restored:
            return None
        shipped = self.catalog.file(target.connector, name)
        if shipped is None or shipped.state not in (FileState.SHIPPED, FileState.APPLIED):
            return None
        return name

    def _proven_restored(self, target: ShipTarget, name: str | None) -> str | None:
        """`name` when the kept copies up to it may go: a segment this primary
        shipped and recorded. A name the site made up (or one past everything
        shipped) prunes nothing; the size cap still does."""
        if name is None:
            return None
        row = self.catalog.file(target.connector, name)
        if row is None or row.state not in (FileState.SHIPPED, FileState.APPLIED):
            if self._unproven_restored.get(target.connector) != name:
                event(
                    log,
                    logging.WARNING,
                    "the site's last restored file was never shipped: no kept copy pruned",
                    connector=target.connector,
                    file=name,
                )
            self._unproven_restored[target.connector] = name
            return None
        return name

    def _repair(self, transport: Transport, target: ShipTarget, refused: tuple[str, ...]) -> None:
        """Ship again what restore-wal refused as corrupt, from the spool's kept copy
        when it matches what was shipped; say loudly when there is none.

        restore-wal sets the refused copy and its record aside at the site, so the
        re-ship is a new file. A record still there means either that the re-ship
        waits for the standby's next try, or an older logship at the site that sets
        nothing aside: only an unrestricted key may then ship over it.
        """
        lost: list[str] = []
        stuck: list[str] = []
        now = time.monotonic()
        self._reshipped_at = {
            key: at for key, at in self._reshipped_at.items() if now - at < RESHIP_EVERY_S
        }
        for name in refused:
            last = self._reshipped_at.get((target.connector, name))
            if last is not None and now - last < RESHIP_EVERY_S:
                continue  # shipped again a moment ago: the site has not caught up yet
            expected = shipped_sha256(target.spool_dir, name)
            kept = kept_path(target.spool_dir, name)
            entry = entry_for(target.connector, kept)
            if entry is None or expected is None or sha256_of(kept) != expected:
                lost.append(name)
                continue
            present = transport.read_bytes(target.layout.record_path(name)) is not None
            if present and self.site.restricted:
                if not self._set_aside_at_site(transport, target, name):
                    stuck.append(name)
                continue
            try:
                ship_file(
                    transport,
                    target.layout,
                    entry,
                    target.compression,
                    self._clock,
                    replace=present,
                )
            except SiteRefused:
                # A restricted site holds another copy under the name (a crash
                # between the file and its record): only the site may set it aside.
                stuck.append(name)
                continue
            self._reshipped_at[(target.connector, name)] = now
            if not self.site.restricted:
                # Restricted: restore-wal removes the note once it takes the file.
                transport.remove(target.layout.refused_note(name))
            message = (
                f"{name} was refused as corrupt at site {self.site.name}; "
                "shipped again from the spool's kept copy"
            )
            event(log, logging.WARNING, "re-shipped", connector=target.connector, file=name)
            self.catalog.add_event(target.connector, self._clock(), "error", message)
        key = target.connector
        problems = []
        if lost:
            problems.append(
                f"{target.connector}: {', '.join(lost)} refused as corrupt at site "
                f"{self.site.name}, and the spool has no good copy left: the standby cannot "
                "replay past it. Copy the segment from the primary's pg_wal if it is still "
                f"there, or take a new base backup (logship base-backup {target.connector})"
            )
        if stuck:
            problems.append(
                f"{target.connector}: {', '.join(stuck)} refused as corrupt at site "
                f"{self.site.name}, which could not set the bad copy aside (see restore-wal's "
                "message in the standby's log), and this restricted key may not replace it: "
                f"move it from {target.layout.wal_dir} and its record from "
                f"{target.layout.manifest_dir} into {target.layout.quarantine_dir} there, "
                "and it ships again"
            )
        if not problems:
            self._unrepairable.pop(key, None)
            return
        message = "; ".join(problems)
        if self._unrepairable.get(key) != message:
            event(log, logging.ERROR, "corrupt at the site", connector=key, files=lost + stuck)
            self.catalog.add_event(key, self._clock(), "error", message)
        self._unrepairable[key] = message

    def _set_aside_at_site(self, transport: Transport, target: ShipTarget, name: str) -> bool:
        """Whether restore-wal's refused note says it moved the bad copy aside (then
        a record there now is the re-ship's, waiting for the standby's next try)."""
        data = transport.read_bytes(target.layout.refused_note(name))
        if data is None:
            return True  # taken meanwhile: restore-wal removes the note then
        try:
            note = json.loads(data[:NOTE_LIMIT])
        except (ValueError, RecursionError):
            return False
        moved = note.get("set_aside") if isinstance(note, dict) else None
        return isinstance(moved, list) and bool(moved)

    def _warn_once(self, connector: str, error: str | None) -> None:
        if self._sample_errors.get(connector) != error:
            event(
                log, logging.WARNING, "standby status unavailable", connector=connector, error=error
            )
        self._sample_errors[connector] = error
