"""execute_reply <-> stored outcome: what ``exec:<msg_id>`` holds for a cell, and back.

A resolved execution holds a :class:`CellResult`, a rejected one a
:class:`CellError`; both carry the cell's outputs, so a re-sent msg_id gets
the same outputs and the same reply without running again.
"""

from __future__ import annotations

import json
from typing import Any

from resonate.types import PromiseRecord

from kernel.core.clock import to_ms
from kernel.core.models import CellError, CellOutcome, CellResult, Timings
from kernel.store.records import error_of


def timings(started: float, finished: float) -> Timings:
    """Wall-clock start and end of a run (``time.time()`` seconds)."""
    return Timings(started=started, finished=finished, duration_ms=to_ms(finished - started))


def outcome_of_reply(eid: str, reply: dict[str, Any], outputs: list[dict[str, Any]], timings: Timings) -> CellOutcome:
    """The outcome to store for a cell ipykernel ran and answered with ``reply``."""
    count = reply.get("execution_count")
    if reply.get("status") == "ok":
        return CellResult(
            execution_id=eid,
            execution_count=count,
            outputs=outputs,
            user_expressions=reply.get("user_expressions") or {},
            payload=[p for p in reply.get("payload") or [] if _jsonable(p)],
            timings=timings,
        )
    return CellError(
        execution_id=eid,
        execution_count=count,
        ename=reply.get("ename", "Error"),
        evalue=reply.get("evalue", ""),
        traceback=reply.get("traceback", [])[-20:],
        outputs=outputs,
        timings=timings,
    )


def outcome_of_run(
    eid: str, execution_count: int, error: BaseException | None, outputs: list[dict[str, Any]], timings: Timings
) -> CellOutcome:
    """The outcome to store for code the shell ran directly (a resumed execution)."""
    if error is None:
        return CellResult(execution_id=eid, execution_count=execution_count, outputs=outputs, timings=timings)
    return CellError(
        execution_id=eid,
        execution_count=execution_count,
        ename=type(error).__name__,
        evalue=str(error),
        outputs=outputs,
        timings=timings,
    )


def stored_reply(record: PromiseRecord) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The outputs to publish again and the reply to send for a settled (or still
    pending) execution that ran before."""
    data = record.value.data
    if record.state == "resolved" and isinstance(data, dict):
        result = CellResult.model_validate(data)
        return result.outputs, {
            "status": "ok",
            "execution_count": result.execution_count,
            "user_expressions": result.user_expressions,
            "payload": result.payload,
        }
    error = error_of(data) or CellError(
        execution_id=record.id,
        ename="ExecutionStillPending" if record.state == "pending" else "ExecutionRejected",
        evalue=(
            f"{record.id} was submitted before and has not finished; it is not run twice"
            if record.state == "pending"
            else f"{record.id} ended as {record.state}"
        ),
    )
    outputs = list(error.outputs)
    if not any(o.get("output_type") == "error" for o in outputs):
        outputs.append({"output_type": "error", "ename": error.ename, "evalue": error.evalue, "traceback": error.traceback})
    return outputs, {
        "status": "error",
        "execution_count": error.execution_count,
        "ename": error.ename,
        "evalue": error.evalue,
        "traceback": error.traceback,
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
