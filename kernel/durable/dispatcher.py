"""Where the engine's thread and the kernel's main thread meet for a cell.

``durable_execute`` runs on the runtime's loop thread when the engine delivers
``exec:<msg_id>``; the cell must run on the main thread. The kernel announces
the execution it is about to submit (:meth:`CellDispatcher.expect`), the
dispatcher hands it a :class:`Handoff` when it arrives, and the main thread
completes the handoff's ``outcome``, which settles the promise. An execution
no request here expects (one a dead kernel left pending) is kept as an
:class:`Orphan` for the resume policy to decide.

A kernel that stops waiting (the engine stalled past PYREPL3_START_TIMEOUT, or
an interrupt) and runs the cell without durability *abandons* the ticket
(:meth:`CellDispatcher.take`, :meth:`CellDispatcher.abandon`). Taking and
abandoning are one atomic choice on the ticket (a future that is either given
its hand-off or cancelled, never both), so an execution is either handed to the
main thread or settled with the abandoning error when it arrives -- however
late. The hand-off is the one moment that is known to this process only, so it
is put on record: ``exec:<msg_id>:started``, stored by the main thread once it has
the hand-off where it writes to the engine directly, else on the loop
(``on_handoff``) before the hand-off's ``recorded`` is done;
see :mod:`kernel.durable.resume` for why that, and not a deadline, decides
whether a pending execution may be resumed.

An execution delivered again whose outcome this process has or will have (its
task was taken back from a cell that held the GIL past its lease; or a dead
kernel had finished it, :meth:`CellDispatcher.finished`) gets that one
outcome: never a second run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from kernel.core.clock import SYSTEM, Clock
from kernel.core.ids import exec_id
from kernel.core.models import CellError, CellOutcome, ExecutionParams
from kernel.core.interrupts import MAIN, Interrupts

log = logging.getLogger(__name__)


def _done(outcome: CellOutcome) -> cf.Future[CellOutcome]:
    """A future that already holds ``outcome``."""
    done: cf.Future[CellOutcome] = cf.Future()
    done.set_result(outcome)
    return done


@dataclass
class Handoff:
    """What the main thread receives when its execution starts."""

    params: ExecutionParams
    outcome: cf.Future[CellOutcome]
    #: Done once the hand-off is on record (``exec:<msg_id>:started``), or failed to be.
    recorded: cf.Future[None] = field(default_factory=cf.Future)

    @property
    def execution_id(self) -> str:
        return exec_id(self.params.msg_id)


@dataclass
class Orphan:
    """An execution delivered to this process that no request here is waiting
    for: one left pending by a kernel that died. The kernel decides its fate by
    completing ``outcome`` (resume it, or reject it as interrupted)."""

    params: ExecutionParams
    outcome: cf.Future[CellOutcome]

    @property
    def execution_id(self) -> str:
        return exec_id(self.params.msg_id)


class CellDispatcher:
    """Meets ``durable_execute`` (runtime thread) and the kernel (main thread)."""

    def __init__(self, clock: Clock = SYSTEM, interrupts: Interrupts = MAIN) -> None:
        self._clock = clock
        self._interrupts = interrupts
        self._waiting: dict[str, cf.Future[Handoff]] = {}
        self._abandoned: dict[str, CellError] = {}
        self._orphans: dict[str, Orphan] = {}
        self._recent: dict[str, cf.Future[CellOutcome]] = {}
        self._lock = threading.Lock()
        self._orphan_arrived = threading.Condition(self._lock)
        #: Called (on the runtime loop) once the main thread has an execution's hand-off.
        self.on_handoff: Callable[[str], Awaitable[None]] | None = None

    def expect(self, execution_id: str) -> cf.Future[Handoff]:
        fut: cf.Future[Handoff] = cf.Future()
        with self._lock:
            self._waiting[execution_id] = fut
        return fut

    def take(self, ticket: cf.Future[Handoff], timeout: float, error: CellError) -> Handoff | None:
        """The hand-off, if the engine delivers it within ``timeout``; else the
        ticket is abandoned with ``error`` (and None returned) -- unless the
        hand-off won the race, which is then returned and must be run."""
        deadline = self._clock.monotonic() + timeout
        try:
            handoff = self._interrupts.wait(ticket, timeout)
        except cf.TimeoutError:
            if self._cancel(ticket, error):
                return None
            handoff = ticket.result()
        # Run durably either way (the choice is made); waiting for the record only narrows
        # the window in which a dying kernel leaves an execution that cannot be resumed.
        with contextlib.suppress(cf.TimeoutError):
            self._interrupts.wait(handoff.recorded, max(0.0, deadline - self._clock.monotonic()))
        return handoff

    def abandon(self, ticket: cf.Future[Handoff], error: CellError) -> None:
        """The kernel will not run this execution: settle it with ``error``
        whenever (or if already) the engine delivers it, so it is never left
        pending. ``error.execution_id`` names it."""
        if self._cancel(ticket, error):
            return

        def settle(done: cf.Future[Handoff]) -> None:
            outcome = done.result().outcome
            if not outcome.done():
                outcome.set_result(error)

        ticket.add_done_callback(settle)

    def _cancel(self, ticket: cf.Future[Handoff], error: CellError) -> bool:
        with self._lock:
            if not ticket.cancel():
                return False  # handed off already
            self._abandoned[error.execution_id] = error
            if self._waiting.get(error.execution_id) is ticket:
                del self._waiting[error.execution_id]
        return True

    def forget(self, execution_id: str) -> None:
        with self._lock:
            self._waiting.pop(execution_id, None)

    def finished(self, execution_id: str, outcome: CellOutcome) -> None:
        """``execution_id`` ran to its end (a dead kernel stored its checkpoint and
        outcome, :mod:`kernel.durable.settling`): when the engine delivers it, it is
        settled with ``outcome``; it is neither an orphan nor run again."""
        with self._lock:
            orphan = self._orphans.pop(execution_id, None)
        if orphan is not None and not orphan.outcome.done():  # delivered already: it waits as an orphan
            orphan.outcome.set_result(outcome)
            return
        self._remember(execution_id, _done(outcome))

    async def dispatch(self, execution_id: str, params: ExecutionParams) -> CellOutcome:
        with self._lock:
            known = self._recent.get(execution_id)
            abandoned = self._abandoned.pop(execution_id, None)
            ticket = self._waiting.pop(execution_id, None) if known is None and abandoned is None else None
            if known is None and ticket is None and abandoned is None:
                orphan = self._orphans.get(execution_id)
                if orphan is None or orphan.outcome.done():
                    orphan = Orphan(params, cf.Future())
                    self._orphans[execution_id] = orphan
                    self._orphan_arrived.notify_all()
        if abandoned is not None:
            # Its kernel gave up waiting and ran the cell without durability: never run it
            # (and a delivery again gets the same error).
            self._remember(execution_id, _done(abandoned))
            return abandoned
        if known is not None:
            # Delivered again while (or after) this process runs it: the engine took the task
            # back (a cell that held the GIL past its lease) and re-delivered it, or it finished
            # before a kernel died. Settle it with the one outcome, under the new lease.
            return await asyncio.wrap_future(known)
        if ticket is None:
            self._remember(execution_id, orphan.outcome)
            return await asyncio.wrap_future(orphan.outcome)
        outcome: cf.Future[CellOutcome] = cf.Future()
        self._remember(execution_id, outcome)
        handoff = Handoff(params, outcome)
        if self.on_handoff is None:  # the main thread records it itself (DurableRuntime.record_start)
            handoff.recorded.set_result(None)
        try:
            ticket.set_result(handoff)
        except cf.InvalidStateError:  # abandoned a moment ago
            with self._lock:
                error = self._abandoned.pop(execution_id, None)
            if error is not None:
                self._remember(execution_id, _done(error))
                return error
            raise
        if self.on_handoff is not None:
            try:
                await self.on_handoff(execution_id)
            except Exception:  # noqa: BLE001 - without the record it is not resumed: at most once
                log.warning("could not record that %s started; it will not be resumed if this kernel dies", execution_id, exc_info=True)
            finally:
                handoff.recorded.set_result(None)
        return await asyncio.wrap_future(outcome)

    #: How many recent outcomes :meth:`outcome_of` remembers.
    REMEMBERED = 32

    def _remember(self, execution_id: str, outcome: cf.Future[CellOutcome]) -> None:
        with self._lock:
            self._recent[execution_id] = outcome
            while len(self._recent) > self.REMEMBERED:
                self._recent.pop(next(iter(self._recent)))

    def outcome_of(self, execution_id: str) -> CellOutcome | None:
        """The outcome this process handed the engine for ``execution_id`` (one of
        the last few): when the engine was lost before storing it, the session
        that reconnects stores it then."""
        with self._lock:
            fut = self._recent.get(execution_id)
        return fut.result() if fut is not None and fut.done() and not fut.cancelled() else None

    def take_orphan(self, execution_id: str, timeout: float) -> Orphan | None:
        """Wait up to ``timeout`` for the engine to deliver an expected orphan."""
        with self._lock:
            self._orphan_arrived.wait_for(lambda: execution_id in self._orphans, timeout)
            return self._orphans.pop(execution_id, None)
