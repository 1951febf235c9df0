"""The read side's shared vocabulary: filters, error payloads, execution rows.

Every engine's catalog answers with the same shapes
(:class:`~kernel.core.models.PromiseRecord`,
:class:`~kernel.core.models.ExecutionSummary`); the helpers that build them
from a decoded record live here, so no engine imports another for them.
"""

from __future__ import annotations

from typing import Any

from resonate.codec import Codec, NoopEncryptor
from resonate.types import Value

from kernel.core.ids import kind_of
from kernel.core.models import CellError, ExecutionSummary, PromiseRecord
from kernel.store.base import Catalog

_codec = Codec(NoopEncryptor())

#: The states a promise never leaves.
TERMINAL = ("resolved", "rejected", "rejected_canceled", "rejected_timedout")


def matching(placeholder: str, **columns: Any) -> tuple[str, list[Any]]:
    """`` AND col = ?`` for every column whose value is not None, and the values
    (``placeholder`` is ``?`` for SQLite, ``%s`` for psycopg). Every engine's
    read side filters its optional session/kind arguments with it."""
    given = {c: v for c, v in columns.items() if v is not None}
    return "".join(f" AND {c} = {placeholder}" for c in given), list(given.values())


def decode_value(data: str | None) -> Any:
    """A promise param/value as stored on the wire (base64 JSON) to plain data; None if empty."""
    return _codec.decode(Value(headers=None, data=data)) if data else None


def error_of(value: Any) -> CellError | None:
    """The structured error a rejected execution carries, if it is one of ours."""
    if isinstance(value, dict) and value.get("__type") == "error":
        try:
            return CellError.model_validate_json(value.get("message", ""))
        except ValueError:
            return None
    return None


def execution_summary(rec: PromiseRecord) -> ExecutionSummary:
    """One row of ``pyrepl3 executions`` from a decoded ``exec:`` record (any engine)."""
    return summary_row(rec["id"], rec["session"], rec["state"], rec["created_at"], rec["settled_at"], listed_fields(rec["param"], rec["value"], rec["state"]))  # type: ignore[arg-type]


def listed_fields(param: Any, value: Any, state: str) -> dict[str, Any]:
    """What a listing shows of an ``exec:`` promise beyond its columns, from its decoded param
    and value: small, so an engine can keep it beside the record (written when the promise is)
    and list executions without reading outputs."""
    args = task_args(param)
    err = error_of(value) if state != "resolved" else None
    return {
        "execution_count": args.get("execution_count"),
        "code": args.get("code", ""),
        "cell_id": args.get("cell_id"),
        "ename": err.ename if err else None,
    }


def summary_row(pid: str, session: str, state: str, created_at: int, settled_at: int | None, fields: dict[str, Any]) -> ExecutionSummary:
    """An :class:`ExecutionSummary` from a promise's columns and its :func:`listed_fields`."""
    return ExecutionSummary(
        id=pid,
        session=session,
        state=state,
        execution_count=fields.get("execution_count"),
        code=fields.get("code") or "",
        cell_id=fields.get("cell_id"),
        created_at=created_at,
        settled_at=settled_at,
        ename=fields.get("ename"),
    )


def bare_record(pid: str, session: str | None, state: str, created_at: int, settled_at: int | None, timeout_at: int = 0) -> PromiseRecord:
    """A record of a promise's columns only (:meth:`Catalog.of_kind` without values)."""
    return {
        "id": pid, "kind": kind_of(pid), "state": state, "param": None, "value": None, "tags": {},
        "timeout_at": timeout_at, "created_at": created_at, "settled_at": settled_at, "session": session,
    }  # fmt: skip


def outputs_of(rec: PromiseRecord) -> list[dict[str, Any]]:
    """The nbformat outputs a settled ``exec:`` record holds (resolved or rejected)."""
    if rec["state"] == "resolved" and isinstance(rec["value"], dict):
        return list(rec["value"].get("outputs") or [])
    err = error_of(rec["value"])
    return list(err.outputs) if err else []


def latest_outputs(
    catalog: Catalog, session: str, execution_count: int | None = None, cell_id: str | None = None, *, skip: str | None = None
) -> list[dict[str, Any]] | None:
    """The outputs of ``session``'s latest settled execution with outputs (that count, or that cell), or None.

    ``skip`` is the execution asking (``%durable outputs`` itself)."""
    for row in reversed(catalog.executions(session)):
        if row.id == skip or row.state not in TERMINAL:
            continue
        if execution_count is not None and row.execution_count != execution_count:
            continue
        if cell_id is not None and row.cell_id != cell_id:
            continue
        rec = catalog.promise(row.id)
        outputs = outputs_of(rec) if rec is not None else []
        if outputs:
            return outputs
        if execution_count is not None or cell_id is not None:
            return None
    return None


def task_args(param: Any) -> dict[str, Any]:
    """The first argument of a task promise's TaskData param (stored as a dict, or decoded as
    ``TaskData``): an exec promise's ExecutionParams dict, a remote call's sealed call."""
    args = param.get("args") if isinstance(param, dict) else getattr(param, "args", None)
    if args and isinstance(args[0], dict):
        return args[0]
    return {}


__all__ = ["TERMINAL", "bare_record", "decode_value", "error_of", "execution_summary", "listed_fields", "matching", "summary_row", "task_args"]
