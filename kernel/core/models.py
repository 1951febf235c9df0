"""The payloads that cross the durability boundary.

Promise params and values are JSON; these models fix their shape so the kernel,
the CLI and the tests read the same thing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Self, TypedDict

import msgspec


class Model(msgspec.Struct, kw_only=True):
    """A typed JSON payload: a :class:`msgspec.Struct` with the few conversions
    the code uses, named as pydantic names them.

    Not pydantic, for the start time: importing pydantic and building its
    models took longer than the rest of the kernel's own import; msgspec is
    imported by the Resonate SDK anyway, and defining a Struct costs microseconds.
    Reading (``model_validate*``) checks types and converts lax JSON values
    (``"3"`` for 3) and ignores unknown keys; a wrong payload raises
    :class:`msgspec.ValidationError`, a ``ValueError``. Subclasses pass
    ``kw_only=True`` too (msgspec does not inherit it): fields with defaults
    may then come before required ones.
    """

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        return msgspec.convert(data, cls, strict=False)

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> Self:
        return msgspec.json.decode(text, type=cls, strict=False)

    @classmethod
    def model_construct(cls, **fields: Any) -> Self:
        """Built from trusted parts (a Struct's constructor never validates)."""
        return cls(**fields)

    def model_dump(self, *, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """Plain data (dicts, lists, str, numbers: the same in both modes for these models)."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]

    def model_dump_json(self) -> str:
        return msgspec.json.encode(self).decode()

    def model_copy(self, *, deep: bool = False) -> Self:
        return copy.deepcopy(self) if deep else copy.copy(self)


class ExecutionParams(Model, kw_only=True):
    """The param of ``exec:<msg_id>``: what was asked to run, and by whom."""

    session: str
    msg_id: str
    code: str
    execution_count: int
    cell_id: str | None = None
    kernel_pid: int
    nonce: str  # tells this kernel's create apart from an earlier one
    submitted_at: float
    #: The session key's signature of all the fields above, bound to the session and
    #: ``exec:<msg_id>`` (:mod:`kernel.durable.sealing`); an execution is resumed only if it verifies.
    signature: str = ""
    sealed: int = 0


class Timings(Model, kw_only=True):
    started: float
    finished: float
    duration_ms: float


class CellResult(Model, kw_only=True):
    """The value of a resolved ``exec:<msg_id>``."""

    status: Literal["ok"] = "ok"
    execution_id: str
    execution_count: int
    outputs: list[dict[str, Any]] = []
    user_expressions: dict[str, Any] = {}
    payload: list[dict[str, Any]] = []
    timings: Timings


class CellError(Model, kw_only=True):
    """Carried (as JSON) by a rejected ``exec:<msg_id>``."""

    status: Literal["error"] = "error"
    execution_id: str
    execution_count: int | None = None
    ename: str
    evalue: str
    traceback: list[str] = []
    code: str | None = None  # RES00x for errors of PyREPL3 itself
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


class ExecutionSummary(Model, kw_only=True):
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
