"""One span and the execution metrics per cell, around the cell protocol.

:func:`execute_traced` wraps :meth:`DurableSession.execute` in the
``pyrepl3.execution`` span, on the thread that runs the cell, so the step,
prompt and checkpoint spans made inside are its children. How the execution
went is read from the :class:`~kernel.durable.cells.CellRequest` calls the
session makes (ran, replayed, ran without durability, interrupted), so the
session itself holds no tracing code. A replayed execution ran before: it gets
its span (marked ``pyrepl3.replayed``) but counts in no metric a second time.
A resumed one is marked ``pyrepl3.resumed``, whether it came back through a
re-sent msg_id or ``%durable resume`` (:func:`execution`).
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

from kernel.core import tracing
from kernel.core.ids import exec_id
from kernel.core.models import CellError, CellOutcome, ExecutionParams
from kernel.durable.cells import CellRequest, RanCell

R = TypeVar("R")


class ExecutionTrace:
    """The ``pyrepl3.execution`` span and the active/duration metrics around one execution
    (a context manager, not a generator: it is on every cell's path); :meth:`ended` with the
    outcome records it on the span and counts an error."""

    def __init__(self, execution_id: str, session: str, msg_id: str, execution_count: int | None, *, resumed: bool = False) -> None:
        self._context = tracing.span(
            tracing.EXECUTION, promise_id=execution_id, msg_id=msg_id, session=session, execution_count=execution_count, resumed=resumed
        )  # fmt: skip
        self.span: Any = None
        self.started = 0.0
        self.outcome: CellOutcome | None = None
        self.replayed = False

    def __enter__(self) -> ExecutionTrace:
        tracing.ACTIVE_EXECUTIONS.add(1)
        self.started = time.perf_counter()
        self.span = self._context.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._context.__exit__(*exc)
        finally:
            tracing.ACTIVE_EXECUTIONS.add(-1)
            if not self.replayed:
                tracing.EXECUTION_DURATION.record(time.perf_counter() - self.started, {"pyrepl3.outcome": self._result()})

    def _result(self) -> str:
        if self.outcome is None:
            return "unknown"
        return "error" if isinstance(self.outcome, CellError) else "ok"

    def ended(self, outcome: CellOutcome) -> CellOutcome:
        self.outcome = outcome
        error = isinstance(outcome, CellError)
        if self.span.is_recording():
            self.span.set_attributes(tracing.attributes({"outcome": "error" if error else "ok", "ename": outcome.ename if error else None}))
            if error:
                tracing.failed(self.span, f"{outcome.ename}: {outcome.evalue}")
        if error:
            tracing.ERRORS.add(1, {"pyrepl3.ename": outcome.ename})
        return outcome

    def mark(self, **values: Any) -> None:
        if self.span.is_recording():
            self.span.set_attributes(tracing.attributes(values))


#: One execution's trace: ``with execution(eid, session, msg_id, count) as trace: ... trace.ended(outcome)``.
execution = ExecutionTrace


def resumed(params: ExecutionParams) -> ExecutionTrace:
    """:func:`execution` for an interrupted execution run again by ``%durable resume``."""
    return ExecutionTrace(exec_id(params.msg_id), params.session, params.msg_id, params.execution_count, resumed=True)


class TracedCell(CellRequest[R]):
    """A :class:`CellRequest` that tells its execution's trace how the session drove it."""

    def __init__(self, cell: CellRequest[R], trace: ExecutionTrace) -> None:
        self.cell, self.trace = cell, trace

    def show_notices(self) -> None:
        self.cell.show_notices()

    async def run(self, execution_id: str) -> RanCell[R]:
        ran = await self.cell.run(execution_id)
        self.trace.ended(ran.outcome)
        return ran

    async def run_without_durability(self) -> R:
        self.trace.mark(durable=False)
        return await self.cell.run_without_durability()

    def interrupted(self) -> R:
        self.trace.mark(outcome="interrupted")
        return self.cell.interrupted()

    def replay(self, record: Any) -> R:
        self.trace.replayed = True
        self.trace.mark(replayed=True, outcome="ok" if record.state == "resolved" else "error")
        return self.cell.replay(record)


async def execute_traced(session: Any, msg_id: str, code: str, execution_count: int, cell_id: str | None, cell: CellRequest[R]) -> R:
    """``session.execute(...)`` (a :class:`~kernel.durable.session.DurableSession`) inside its execution's span."""
    eid = exec_id(msg_id)
    was_interrupted = eid in session.resume.interrupted  # a re-sent msg_id of a dead kernel's execution: resumed
    with execution(eid, session.session, msg_id, execution_count, resumed=was_interrupted) as trace:
        return await session.execute(msg_id, code, execution_count, cell_id, TracedCell(cell, trace))


__all__ = ["ExecutionTrace", "TracedCell", "execute_traced", "execution", "resumed"]
