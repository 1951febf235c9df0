"""Deterministic promise ids: one place that knows how they are spelled.

``exec:<msg_id>``                  a cell's execution (the execute_request's msg_id)
``exec:<msg_id>:input:<n>``        the n-th prompt (input/getpass/approval) in it
``exec:<msg_id>:step:<n>``         the n-th durable step in it
``exec:<msg_id>:ckpt:<name>:<v>``  version v of a named checkpoint in it
``ckpt:<session-key>:<count>``     a namespace checkpoint manifest
"""

from __future__ import annotations

EXEC_PREFIX = "exec:"


def exec_id(msg_id: str) -> str:
    return f"{EXEC_PREFIX}{msg_id}"


def input_id(execution_id: str, n: int) -> str:
    return f"{execution_id}:input:{n}"


def step_id(execution_id: str, n: int) -> str:
    return f"{execution_id}:step:{n}"


def kind_of(promise_id: str) -> str:
    """Classify a promise id: exec, input, step, checkpoint or other."""
    if promise_id.startswith(EXEC_PREFIX):
        rest = promise_id[len(EXEC_PREFIX) :].split(":")
        if len(rest) == 1:
            return "exec"
        if len(rest) == 3 and rest[1] in ("input", "step"):
            return rest[1]
        if len(rest) == 4 and rest[1] == "ckpt":
            return "step"
        return "other"
    if promise_id.startswith("ckpt:"):
        return "checkpoint"
    return "other"


def execution_of(promise_id: str) -> str | None:
    """The ``exec:<msg_id>`` a child promise belongs to, or None."""
    if not promise_id.startswith(EXEC_PREFIX):
        return None
    return ":".join(promise_id.split(":")[:2])
