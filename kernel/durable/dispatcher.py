"""Where the engine's thread and the kernel's main thread meet for a cell.

``durable_execute`` runs on the runtime's loop thread when the engine delivers
``exec:<msg_id>``; the cell must run on the main thread. The kernel announces
the execution it is about to submit (:meth:`CellDispatcher.expect`), the
dispatcher hands it a :class:`Handoff` when it arrives, and the main thread
completes the handoff's ``outcome``, which settles the promise. An execution
no request here expects (one a dead kernel left pending) is kept as an
:class:`Orphan` for the resume policy to decide. An execution delivered again
whose outcome this process has or will have (its task was taken back from a
cell that held the GIL past its lease; or a dead kernel had finished it,
:meth:`CellDispatcher.finished`) gets that one outcome: never a second run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from dataclasses import dataclass

from kernel.core.ids import exec_id
from kernel.core.models import CellOutcome, ExecutionParams


@dataclass
class Handoff:
    """What the main thread receives when its execution starts."""

    params: ExecutionParams
    outcome: cf.Future[CellOutcome]

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

    def __init__(self) -> None:
        self._waiting: dict[str, cf.Future[Handoff]] = {}
        self._orphans: dict[str, Orphan] = {}
        self._recent: dict[str, cf.Future[CellOutcome]] = {}
        self._lock = threading.Lock()
        self._orphan_arrived = threading.Condition(self._lock)

    def expect(self, execution_id: str) -> cf.Future[Handoff]:
        fut: cf.Future[Handoff] = cf.Future()
        with self._lock:
            self._waiting[execution_id] = fut
        return fut

    def abandon(self, ticket: cf.Future[Handoff], error: CellOutcome) -> None:
        """The kernel will not run this execution: settle it with ``error``
        whenever (or if already) the engine delivers it, so it is never left pending."""

        def settle(done: cf.Future[Handoff]) -> None:
            outcome = done.result().outcome
            if not outcome.done():
                outcome.set_result(error)

        ticket.add_done_callback(settle)

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
        done: cf.Future[CellOutcome] = cf.Future()
        done.set_result(outcome)
        self._remember(execution_id, done)

    async def dispatch(self, execution_id: str, params: ExecutionParams) -> CellOutcome:
        with self._lock:
            known = self._recent.get(execution_id)
            ticket = self._waiting.pop(execution_id, None) if known is None else None
            if known is None and ticket is None:
                orphan = self._orphans.get(execution_id)
                if orphan is None or orphan.outcome.done():
                    orphan = Orphan(params, cf.Future())
                    self._orphans[execution_id] = orphan
                    self._orphan_arrived.notify_all()
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
        ticket.set_result(Handoff(params, outcome))
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
