"""Capture a cell's outputs as nbformat outputs, and publish stored ones again.

ipykernel publishes streams, display data and results through one
``Session.send``; recording at that point sees exactly what the frontend sees,
in order, without touching IPython's display machinery.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

RECORDED = {"stream", "display_data", "execute_result", "error", "update_display_data", "clear_output"}


def to_output(msg: dict[str, Any]) -> dict[str, Any]:
    """An iopub message as an nbformat v4 output (the same shape as
    ``nbformat.v4.output_from_msg``, without its per-output schema validation:
    the messages come from this kernel and are valid by construction, and the
    validation costs more than the rest of the recording)."""
    kind, content = msg["header"]["msg_type"], msg["content"]
    if kind == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if kind == "error":
        return {"output_type": "error", "ename": content["ename"], "evalue": content["evalue"], "traceback": content["traceback"]}
    out = {"output_type": kind, "data": content.get("data", {}), "metadata": content.get("metadata", {})}
    if kind == "execute_result":
        out["execution_count"] = content.get("execution_count")
    return out


class OutputRecorder:
    """Wraps a ``Session`` so iopub messages for the current parent are recorded."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._send = session.send
        self.parent_msg_id: str | None = None
        self.outputs: list[dict[str, Any]] = []
        self._stack: list[list[dict[str, Any]]] = []
        self._clear_pending = False
        #: display_id -> the recorded outputs it names (update_display_data targets).
        self._displays: dict[str, list[dict[str, Any]]] = {}
        session.send = self._recording_send

    def _recording_send(self, stream: Any, msg_or_type: Any, content: Any = None, parent: Any = None, *args: Any, **kwargs: Any) -> Any:
        msg = self._send(stream, msg_or_type, content, parent, *args, **kwargs)
        if self.parent_msg_id is not None and isinstance(msg, dict):
            header = msg.get("header") or {}
            if header.get("msg_type") in RECORDED and (msg.get("parent_header") or {}).get("msg_id") == self.parent_msg_id:
                self._record(msg)
        return msg

    def _record(self, msg: dict[str, Any]) -> None:
        """Keep ``outputs`` equal to what a notebook shows: honour clear_output
        (also its ``wait`` form) and display updates by display_id."""
        msg_type, content = msg["header"]["msg_type"], msg["content"]
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self._clear()
            return
        display_id = (content.get("transient") or {}).get("display_id")
        if msg_type == "update_display_data":
            for out in self._displays.get(display_id, []):
                out["data"], out["metadata"] = content.get("data", {}), content.get("metadata", {})
            return
        if self._clear_pending:
            self._clear()
        out = to_output(msg)
        if display_id is not None:
            self._displays.setdefault(display_id, []).append(out)
        if msg_type == "stream" and self.outputs:
            last = self.outputs[-1]
            if last.get("output_type") == "stream" and last.get("name") == out.get("name"):
                last["text"] += out["text"]
                return
        self.outputs.append(out)

    def _clear(self) -> None:
        self.outputs.clear()
        self._clear_pending = False

    def begin(self, parent_msg_id: str) -> None:
        self.parent_msg_id = parent_msg_id
        self.outputs = []
        self._clear_pending = False
        self._displays = {}

    def push(self) -> None:
        """Record a nested execution separately (its outputs still reach the frontend)."""
        self._stack.append(self.outputs)
        self.outputs = []

    def pop(self) -> list[dict[str, Any]]:
        nested, self.outputs = self.outputs, self._stack.pop()
        return nested

    def end(self) -> list[dict[str, Any]]:
        self.parent_msg_id = None
        outputs, self.outputs = self.outputs, []
        return outputs


def flush_std() -> None:
    """Push buffered stdout/stderr to iopub now (ipykernel's streams buffer).

    Both of ipykernel's streams flush on its IO thread: their flushes are queued
    there together and waited for once (one hop to that thread, not one per
    stream; ``OutStream.flush`` does the same for one), so on return both
    streams' messages have been sent, in order."""
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]
    if not any(_may_hold_text(s) for s in streams):
        return  # nothing written since the last flush: no hop to the IO thread (most cells)
    pub = getattr(streams[0], "pub_thread", None) if streams else None
    thread = getattr(pub, "thread", None)
    if (
        thread is not None and thread.is_alive() and thread.ident != threading.get_ident()
        and all(getattr(s, "pub_thread", None) is pub and callable(getattr(s, "_flush", None)) for s in streams)
    ):
        for stream in streams:
            pub.schedule(stream._flush)
        done = threading.Event()
        pub.schedule(done.set)
        if not done.wait(getattr(streams[0], "flush_timeout", 10.0)):
            print("IOStream.flush timed out", file=sys.__stderr__)
        return
    for stream in streams:
        stream.flush()


def _may_hold_text(stream: Any) -> bool:
    """Whether ``stream`` may have text not yet sent: an ipykernel ``OutStream``
    (ipykernel 7) with nothing in its buffers has none; any other stream may."""
    buffers = getattr(stream, "_buffers", None)
    return not isinstance(buffers, dict) or bool(buffers) or getattr(stream, "echo", None) is not None


def publish(session: Any, socket: Any, parent: dict[str, Any], outputs: list[dict[str, Any]], topic: Callable[[str], bytes]) -> None:
    """Send stored nbformat outputs as iopub messages under a new parent."""
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            content = {"name": out["name"], "text": out["text"]}
            session.send(socket, "stream", content, parent, ident=topic("stream"))
        elif kind == "display_data":
            content = {"data": out.get("data", {}), "metadata": out.get("metadata", {}), "transient": {}}
            session.send(socket, "display_data", content, parent, ident=topic("display_data"))
        elif kind == "execute_result":
            content = {
                "execution_count": out.get("execution_count"),
                "data": out.get("data", {}),
                "metadata": out.get("metadata", {}),
            }
            session.send(socket, "execute_result", content, parent, ident=topic("execute_result"))
        elif kind == "error":
            content = {k: out.get(k) for k in ("ename", "evalue", "traceback")}
            session.send(socket, "error", content, parent, ident=topic("error"))
