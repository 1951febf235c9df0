"""The Resonate protocol as PyREPL3 speaks it from synchronous code (CLI, recovery).

The Postgres and http engines both send protocol requests outside the SDK --
to settle a prompt's promise, to give back a dead kernel's leases -- and both
index the ``promise.create`` requests of PyREPL3 sessions; the embedded store
applies the same flat requests to its state machine. This is what they share.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from resonate.codec import Codec, NoopEncryptor

from kernel.core.ids import SESSION_TAG, kind_of

_codec = Codec(NoopEncryptor())


def envelope(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """A protocol request with its head (a fresh correlation id, version 1)."""
    return {"kind": kind, "head": {"corrId": f"pyrepl3-{uuid.uuid4().hex}", "version": "1"}, "data": data}


def encode_value(data: Any) -> Any:
    """A settle's ``value`` as the protocol carries it (the SDK's codec, as plain JSON data)."""
    return msgspec.to_builtins(_codec.encode(data))


def index_entry(req: str) -> dict[str, str] | None:
    """For a ``promise.create`` of a PyREPL3 session: the index row to write with it."""
    if '"promise.create"' not in req or SESSION_TAG not in req:
        return None
    try:
        message = msgspec.json.decode(req)
    except msgspec.DecodeError:
        return None
    if not isinstance(message, dict) or message.get("kind") != "promise.create":
        return None
    data = message.get("data") or {}
    session = (data.get("tags") or {}).get(SESSION_TAG)
    pid = data.get("id")
    if not isinstance(session, str) or not isinstance(pid, str):
        return None
    return {"id": pid, "session": session, "kind": kind_of(pid)}


def flat_response(envelope: dict[str, Any]) -> dict[str, Any]:
    """A response envelope as the flat dict the SDK's in-process state machine answers with."""
    head = envelope.get("head") or {}
    data = envelope.get("data")
    return {**(data if isinstance(data, dict) else {"data": data}), "kind": envelope.get("kind"), "corrId": head.get("corrId"), "status": head.get("status", 200)}


def acquired_by_other(status: int, data: Any, pid: str) -> dict[str, Any] | None:
    """The task of a ``task.get`` answer if another process holds its lease (so it can be released)."""
    task = (data or {}).get("task") if status == 200 and isinstance(data, dict) else None
    if task and task.get("state") == "acquired" and task.get("pid") != pid:
        return task
    return None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (drivers spread theirs over several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


__all__ = ["acquired_by_other", "encode_value", "envelope", "flat_response", "index_entry", "one_line"]
