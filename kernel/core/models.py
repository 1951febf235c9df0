"""Pydantic payloads that cross the durability boundary.

Promise params and values are JSON; these models fix their shape so the kernel,
the CLI and the tests read the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, Field


class ExecutionParams(BaseModel):
    """The param of ``exec:<msg_id>``: what was asked to run, and by whom."""

    session: str
    msg_id: str
    code: str
    execution_count: int
    cell_id: str | None = None
    kernel_pid: int
    nonce: str = Field(description="tells this kernel's create apart from an earlier one")
    submitted_at: float


class Timings(BaseModel):
    started: float
    finished: float
    duration_ms: float


class CellResult(BaseModel):
    """The value of a resolved ``exec:<msg_id>``."""

    status: Literal["ok"] = "ok"
    execution_id: str
    execution_count: int
    outputs: list[dict[str, Any]] = []
    user_expressions: dict[str, Any] = {}
    payload: list[dict[str, Any]] = []
    timings: Timings


class CellError(BaseModel):
    """Carried (as JSON) by a rejected ``exec:<msg_id>``."""

    status: Literal["error"] = "error"
    execution_id: str
    execution_count: int | None = None
    ename: str
    evalue: str
    traceback: list[str] = []
    code: str | None = Field(default=None, description="RES00x for errors of PyREPL3 itself")
    outputs: list[dict[str, Any]] = []
    timings: Timings | None = None


CellOutcome = CellResult | CellError


@dataclass
class ResolvedPromise:
    """A promise to create and resolve in one go (a checkpoint manifest, say).

    Built by the layer that knows the value (kernel.checkpoint) and stored by the
    one that talks to the engine (kernel.durable.runtime), so it lives below both.
    """

    id: str
    timeout_at_ms: int
    param: Any
    tags: dict[str, str]
    value: Any


class ExecutionSummary(BaseModel):
    """One row of ``pyrepl3 executions`` and ``%durable``."""

    id: str
    session: str
    state: str
    execution_count: int | None = None
    code: str = ""
    cell_id: str | None = None
    created_at: int
    settled_at: int | None = None
    ename: str | None = None


class PromiseRecord(TypedDict):
    """A promise as every engine's read side returns it: param and value decoded to plain data."""

    id: str
    kind: str
    state: str
    param: Any
    value: Any
    tags: dict[str, str]
    timeout_at: int
    created_at: int
    settled_at: int | None
    #: The PyREPL3 session the promise belongs to (None if it is not indexed as one of ours).
    session: str | None


class SessionSummary(TypedDict):
    """One row of ``pyrepl3 sessions``."""

    session: str
    executions: int
    pending: int
    first_at: int
    last_at: int
