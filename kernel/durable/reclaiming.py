"""A kernel's side of reclaiming storage: collection in the background, pins, and "reclaimed".

After every ``PYREPL3_GC_EVERY`` checkpoints the kernel collects its own session's garbage
(:class:`kernel.checkpoint.reclaim.Collector`) on a thread of its own, off the cell's path:
the cell that triggered it has its reply already, and the next one does not wait for it
(SQLite readers and the one short delete transaction do not block the kernel's writer).
A collection reads every checkpoint record of the session and lists every blob, so the
kernel skips those that could free nothing (:class:`Schedule`): until a checkpoint it keeps
now may leave retention (:meth:`~kernel.checkpoint.retention.Retention.holds_until`), only
blobs no record names could go, and those only once older than the grace, so one collection
per grace period frees them as soon as anything can.
Besides what the records name, the blobs of the manifest the next capture builds on stay
live: after ``%durable restore N`` that manifest is N's, whose record may be about to go.

``%durable keep N`` pins the newest checkpoint after execution N (retention keeps it, and
what it is built from, whatever its age); ``%durable restore N`` of one collection took
says so instead of "no checkpoint".
"""

from __future__ import annotations

import logging
import threading
from contextlib import closing

from kernel.checkpoint.history import NamespaceCheckpoints
from kernel.checkpoint.reclaim import Collector, GcReport
from kernel.checkpoint.retention import CheckpointRef, Retention, ref_of
from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import CheckpointNotFoundError, ConfigurationError, PyRepl3Error
from kernel.core.settings import Settings
from kernel.core.text import local_time
from kernel.store.base import Engine

log = logging.getLogger(__name__)

#: Seconds closing the session waits for a collection in progress.
CLOSE_WAIT = 10.0
#: The least grace a kernel's own collection uses, whatever PYREPL3_GC_GRACE says: this kernel's
#: next capture may be writing blobs on the main thread while it runs (``0`` is for ``pyrepl3 gc``
#: on a store no kernel writes to).
KERNEL_GRACE = 300.0


def policy_of(settings: Settings) -> Retention:
    return Retention(keep_last=settings.keep_last, keep_seconds=settings.keep_hours * 3600)


class Schedule:
    """When a kernel's automatic collection runs: every ``every``-th stored checkpoint, unless
    the last collection (at ``at``) showed nothing can be freed yet (see the module docstring)."""

    def __init__(self, every: int, grace: float) -> None:
        self.every = every
        self.grace = grace
        self._stored = 0
        #: Wall time before which a collection could free nothing (0: collect when due).
        self.quiet_until = 0.0

    def stored(self, now: float) -> str | None:
        """One more checkpoint was stored at ``now``: ``"collect"`` when a collection is due,
        ``"compact"`` when one would be but could free nothing (the WAL is still folded)."""
        self._stored += 1
        if not self.every or self._stored % self.every:
            return None
        return "collect" if now >= self.quiet_until else "compact"

    def collected(self, report: GcReport, at: float) -> None:
        """A collection that started at ``at`` made ``report``."""
        holds = min((s.holds_until for s in report.sessions), default=at)
        self.quiet_until = min(holds, at + self.grace)

    def reset(self) -> None:
        """Retention may let go of something at once (a pin was removed): collect when next due."""
        self.quiet_until = 0.0

    def stop(self) -> None:
        """Never again: the engine cannot collect (a Resonate server)."""
        self.every = 0


class SessionReclaim:
    """Garbage collection and pins for one session of a kernel."""

    def __init__(
        self, engine: Engine, history: NamespaceCheckpoints, session: str, *, policy: Retention, every: int, grace: float, clock: Clock = SYSTEM,
    ) -> None:
        self.engine = engine
        self.history = history
        self.session = session
        self.policy = policy
        self.grace = max(grace, KERNEL_GRACE)
        self.clock = clock
        self.schedule = Schedule(every, self.grace)
        self._thread: threading.Thread | None = None
        #: The last background collection's report (for ``%durable`` and tests), or its error.
        self.last: GcReport | Exception | None = None

    # -- automatic collection ------------------------------------------------------

    def checkpoint_stored(self) -> None:
        """Called after each stored checkpoint: a due one starts a collection, or folds the WAL
        when a collection could free nothing (never two at once)."""
        due = self.schedule.stored(self.clock.wall())
        if due is None or (self._thread is not None and self._thread.is_alive()):
            return
        target = self._collect_quietly if due == "collect" else self._compact_quietly
        self._thread = threading.Thread(target=target, name="pyrepl3-gc", daemon=True)
        self._thread.start()

    def _compact_quietly(self) -> None:
        try:
            with closing(self.engine.reclaimer()) as reclaimer:
                reclaimer.compact()
        except Exception as exc:  # noqa: BLE001 - as a collection's: the kernel goes on
            log.warning("folding the WAL of session %r failed: %s", self.session, exc, exc_info=True)

    def _collect_quietly(self) -> None:
        started = self.clock.wall()
        try:
            self.last = self.collect()
            self.schedule.collected(self.last, started)
            log.debug("next automatic collection of %r after %s", self.session, self.schedule.quiet_until)
        except ConfigurationError as exc:  # an engine without collection (a Resonate server): stop asking
            self.schedule.stop()
            self.last = exc
            log.info("no garbage collection for session %r: %s", self.session, exc)
        except Exception as exc:  # noqa: BLE001 - garbage stays for the next time; the kernel goes on
            self.last = exc
            log.warning("garbage collection of session %r failed: %s", self.session, exc, exc_info=True)

    def collect(self, *, dry_run: bool = False) -> GcReport:
        """One collection of this session (blobs: the whole store), now, on this thread."""
        previous = self.history.previous
        also_live = set(previous.blob_sizes()) if previous is not None else set()
        reclaimer = self.engine.reclaimer()
        catalog = self.engine.catalog()
        try:
            collector = Collector(catalog, reclaimer, self.history.checkpointer.blobs, self.policy, grace=self.grace, clock=self.clock)
            return collector.run(self.session, dry_run=dry_run, also_live=also_live)
        finally:
            catalog.close()
            reclaimer.close()

    def wait(self, timeout: float = CLOSE_WAIT) -> None:
        """Let a collection in progress finish (closing the session, tests)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def note_outputs(self, execution_id: str, digests: list[str]) -> None:
        """The blobs of ``execution_id``'s large outputs: live for good (executions are never deleted)."""
        try:
            reclaimer = self.engine.reclaimer()
        except ConfigurationError:
            return  # an engine without garbage collection: nothing would take them
        with closing(reclaimer):
            reclaimer.note_output_blobs(self.session, execution_id, digests)

    # -- pins -------------------------------------------------------------------

    def _newest_after(self, execution_count: int) -> CheckpointRef:
        refs = [ref_of(r, self.session) for r in self.history._records(None)]
        matches = [r for r in refs if r.execution_count == execution_count]
        if not matches or self.reclaimed_at(execution_count) is not None:
            raise CheckpointNotFoundError(self.missing(execution_count))
        return max(matches, key=lambda r: r.seq)

    def keep(self, execution_count: int) -> str:
        """Pin the newest checkpoint after ``execution_count``."""
        ref = self._newest_after(execution_count)
        with closing(self.engine.reclaimer()) as reclaimer:
            reclaimer.pin(self.session, ref.seq, execution_count)
        return f"pinned {ref.id} (after execution {execution_count}): garbage collection keeps it"

    def unkeep(self, execution_count: int) -> str:
        with closing(self.engine.reclaimer()) as reclaimer:
            seqs = [seq for seq, count in reclaimer.pins(self.session).items() if count == execution_count]
            for seq in seqs:
                reclaimer.unpin(self.session, seq)
        self.schedule.reset()
        if not seqs:
            return f"no checkpoint after execution {execution_count} is pinned"
        return f"unpinned the checkpoint after execution {execution_count}: retention ({self.policy.describe()}) decides now"

    def pins(self) -> list[tuple[int | None, int]]:
        """(execution count, checkpoint sequence number) of every pin, oldest first."""
        with closing(self.engine.reclaimer()) as reclaimer:
            return sorted(((count, seq) for seq, count in reclaimer.pins(self.session).items()), key=lambda p: p[1])

    # -- what is gone --------------------------------------------------------------

    def reclaimed_at(self, execution_count: int) -> float | None:
        """When the checkpoint after ``execution_count`` was reclaimed (its record deleted, or
        kept only as a link of a delta chain whose replaced values went), if it was."""
        try:
            with closing(self.engine.reclaimer()) as reclaimer:
                return reclaimer.reclaimed(self.session, execution_count)
        except PyRepl3Error:
            return None

    def reclaimed_among(self, execution_counts: set[int]) -> set[int]:
        """Those of ``execution_counts`` whose checkpoint was reclaimed (see :meth:`reclaimed_at`)."""
        try:
            with closing(self.engine.reclaimer()) as reclaimer:
                return {n for n in execution_counts if reclaimer.reclaimed(self.session, n) is not None}
        except PyRepl3Error:
            return set()

    def missing(self, execution_count: int) -> str:
        """Why there is no checkpoint after ``execution_count``: reclaimed (when), or never made."""
        at = self.reclaimed_at(execution_count)
        if at is not None:
            return (
                f"the checkpoint after execution {execution_count} was reclaimed by garbage collection on "
                f"{local_time(int(at * 1000))} (retention keeps {self.policy.describe()})"
            )
        return f"no checkpoint after execution {execution_count} in session {self.session!r}; see %durable checkpoints"


__all__ = ["Schedule", "SessionReclaim", "policy_of"]
