"""Deterministic promise ids: one place that knows how they are spelled.

``exec:<msg_id>``                  a cell's execution (the execute_request's msg_id)
``exec:<msg_id>:input:<n>``        the n-th prompt (input/getpass/approval) in it
``exec:<msg_id>:step:<n>``         the n-th durable step in it
``exec:<msg_id>:ckpt:<name>:<v>``  version v of a named step value (``durable.checkpoint``) in it
``exec:<msg_id>:resume:<k>``       the k-th resume attempt of an interrupted execution
``exec:<msg_id>:started``          the kernel took the execution and began running it
``exec:<msg_id>:rpc:<n>``          the n-th remote call (``durable.rpc``) in it, run by a worker
``ckpt:<session-key>:<count>``     a namespace checkpoint manifest

Tags: :data:`SESSION_TAG` (which session a promise belongs to) and
:data:`KIND_TAG` (input / step), set on every promise PyREPL3 creates.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator

EXEC_PREFIX = "exec:"
CKPT_PREFIX = "ckpt:"
SESSION_TAG = "pyrepl3:session"
KIND_TAG = "pyrepl3:kind"
EXTERNAL_TAG = "resonate:external"


def session_key(session: str) -> str:
    """A file-name-safe, stable key for a session id (which may be a path)."""
    return hashlib.sha256(session.encode()).hexdigest()[:24]


def exec_id(msg_id: str) -> str:
    return f"{EXEC_PREFIX}{msg_id}"


def msg_id_of(execution_id: str) -> str:
    """The msg_id inside ``exec:<msg_id>``."""
    return execution_id[len(EXEC_PREFIX) :] if execution_id.startswith(EXEC_PREFIX) else execution_id


def input_id(execution_id: str, n: int) -> str:
    return f"{execution_id}:input:{n}"


def step_id(execution_id: str, n: int) -> str:
    return f"{execution_id}:step:{n}"


def step_value_id(execution_id: str, name: str, version: int) -> str:
    return f"{execution_id}:ckpt:{name}:{version}"


def resume_attempt_id(execution_id: str, attempt: int) -> str:
    return f"{execution_id}:resume:{attempt}"


def started_id(execution_id: str) -> str:
    return f"{execution_id}:started"


def checkpoint_prefix(session_key: str) -> str:
    """Every namespace checkpoint of a session starts with this."""
    return f"{CKPT_PREFIX}{session_key}:"


def checkpoint_id(session_key: str, seq: int) -> str:
    """Zero-padded, so the ids of a session sort in sequence order."""
    return f"{checkpoint_prefix(session_key)}{seq:010d}"


def kind_of(promise_id: str) -> str:
    """Classify a promise id: exec, input, step, rpc, checkpoint or other."""
    if promise_id.startswith(EXEC_PREFIX):
        rest = promise_id[len(EXEC_PREFIX) :].split(":")
        if len(rest) == 1:
            return "exec"
        if len(rest) == 3 and rest[1] in ("input", "step", "rpc"):
            return rest[1]
        if len(rest) == 4 and rest[1] == "ckpt":
            return "step"
        return "other"
    if promise_id.startswith(CKPT_PREFIX):
        return "checkpoint"
    return "other"


def execution_of(promise_id: str) -> str | None:
    """The ``exec:<msg_id>`` a child promise belongs to, or None."""
    if not promise_id.startswith(EXEC_PREFIX):
        return None
    return ":".join(promise_id.split(":")[:2])


class ChildNumbering:
    """Numbers the child promises (prompts, steps) of the running execution.

    Numbering restarts at 1 for every run of an execution, which is what makes a
    resumed execution find its earlier children under the same ids.
    """

    def __init__(self) -> None:
        self.execution_id: str | None = None
        self._count = 0

    def begin(self, execution_id: str) -> None:
        self.execution_id, self._count = execution_id, 0

    def end(self) -> None:
        self.execution_id = None

    @contextlib.contextmanager
    def executing(self, execution_id: str) -> Iterator[None]:
        """Number this execution's children from 1; restore the outer one after
        (a resumed execution runs nested inside the ``%durable resume`` cell)."""
        saved = (self.execution_id, self._count)
        self.begin(execution_id)
        try:
            yield
        finally:
            self.execution_id, self._count = saved

    def next_child(self, make_id: Callable[[str, int], str], what: str) -> str:
        if self.execution_id is None:
            from kernel.core.errors import PyRepl3Error

            raise PyRepl3Error(f"{what} can only be used inside a cell's execution")
        self._count += 1
        return make_id(self.execution_id, self._count)
