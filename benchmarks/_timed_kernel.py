"""A kernel launcher with per-cell timers, for ``profile_cell.py``. Not a product file.

``python benchmarks/_timed_kernel.py -f <connection file>`` starts PyREPL3's
``DurableKernel`` (or plain ipykernel's ``IPythonKernel`` when
``PYREPL3_BENCH_KIND=ipykernel``) after wrapping a few methods with
``time.perf_counter`` timers. Nothing in kernel/ is changed; the wrappers are
installed on the classes in this process only.

Every timing is attributed to the execute_request being handled (its msg_id):
main-thread spans of ``do_execute`` by stage, and everything the runtime thread
does (event-loop callbacks, store requests, SQLite statements) until the next
cell starts. ``dump()`` (called from a cell) writes them as JSON to
``$PYREPL3_BENCH_TIMINGS``. ``perf_counter`` is CLOCK_MONOTONIC on Linux, so
the client can line its own timestamps up with the kernel's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict
from typing import Any

sys.modules.setdefault("pyrepl3_bench_timers", sys.modules[__name__])

_now = time.perf_counter
#: msg_id -> {"marks": {name: t}, "spans": {name: [total_s, count]}}
CELLS: dict[str, dict[str, Any]] = {}
_current: list[dict[str, Any] | None] = [None]


def _cell() -> dict[str, Any] | None:
    return _current[0]


def _add(name: str, seconds: float) -> None:
    cell = _current[0]
    if cell is not None:
        span = cell["spans"][name]
        span[0] += seconds
        span[1] += 1


def _mark(name: str) -> None:
    cell = _current[0]
    if cell is not None and name not in cell["marks"]:
        cell["marks"][name] = _now()


def _new_cell(msg_id: str) -> dict[str, Any]:
    cell = {"marks": {}, "spans": defaultdict(lambda: [0.0, 0])}
    CELLS[msg_id] = cell
    _current[0] = cell
    return cell


def wrap(cls: type, name: str, label: str | None = None, *, marks: bool = False) -> None:
    """Time every call of ``cls.name`` (sync) into span ``label``; with ``marks``
    also record the first start/end of it in the current cell."""
    label = label or f"{cls.__name__}.{name}"
    orig = getattr(cls, name)

    @functools.wraps(orig)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = _now()
        if marks:
            _mark(f"{label}:start")
        try:
            return orig(*args, **kwargs)
        finally:
            t1 = _now()
            _add(label, t1 - t0)
            if marks:
                _mark(f"{label}:end")

    setattr(cls, name, timed)


class _TimedDB:
    """Proxy for the store's sqlite3.Connection: times statements by their first word."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def _timed(self, fn: str, sql: str, *args: Any) -> Any:
        t0 = _now()
        try:
            return getattr(self._db, fn)(sql, *args)
        finally:
            verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
            _add(f"sqlite {verb}", _now() - t0)

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed("execute", sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed("executemany", sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def install(kind: str) -> type:
    from ipykernel.iostream import OutStream
    from ipykernel.ipkernel import IPythonKernel

    # The inner IPython execution (``super().do_execute`` in DurableKernel).
    orig_ipy = IPythonKernel.do_execute

    @functools.wraps(orig_ipy)
    async def ipy_do_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kind == "ipykernel":
            parent = self.get_parent("shell") or {}
            _new_cell((parent.get("header") or {}).get("msg_id", "?"))
            _mark("do_execute:start")
        _mark("ipython:start")
        try:
            return await orig_ipy(self, *args, **kwargs)
        finally:
            _mark("ipython:end")
            if kind == "ipykernel":
                _mark("do_execute:end")

    IPythonKernel.do_execute = ipy_do_execute  # type: ignore[method-assign]

    orig_flush = OutStream.flush

    @functools.wraps(orig_flush)
    def flush(self: Any) -> Any:
        cell = _current[0]
        inside = cell is not None and "do_execute:start" in cell["marks"] and "do_execute:end" not in cell["marks"]
        t0 = _now()
        try:
            return orig_flush(self)
        finally:
            _add("OutStream.flush (inside do_execute)" if inside else "OutStream.flush (after do_execute)", _now() - t0)

    OutStream.flush = flush  # type: ignore[method-assign]

    if kind == "ipykernel":
        return IPythonKernel

    from resonate.connections.local import ServerState

    from kernel.jupyter.kernel import DurableKernel
    from kernel.jupyter.outputs import OutputRecorder
    from kernel.durable.dispatcher import CellDispatcher
    from kernel.durable.runtime import DurableRuntime
    from kernel.store.embedded.store import EmbeddedStore

    orig_do = DurableKernel.do_execute

    @functools.wraps(orig_do)
    async def do_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        parent = self.get_parent("shell") or {}
        _new_cell((parent.get("header") or {}).get("msg_id", "?"))
        _mark("do_execute:start")
        try:
            return await orig_do(self, *args, **kwargs)
        finally:
            _mark("do_execute:end")

    DurableKernel.do_execute = do_execute  # type: ignore[method-assign]

    from kernel.durable.settling import CellSettler

    # Main-thread stages of one cell (a method the code no longer has is left out).
    for cls, meth in (
        (CellDispatcher, "expect"), (DurableRuntime, "submit"), (CellDispatcher, "take"),
        (DurableRuntime, "wait_settled"), (OutputRecorder, "begin"), (OutputRecorder, "end"),
        (CellSettler, "settle"), (CellSettler, "_checkpoint"), (DurableRuntime, "store_resolved"),
        (DurableRuntime, "confirm_settled"), (DurableRuntime, "record_start"), (DurableRuntime, "settle_cell"),
    ):
        if hasattr(cls, meth):
            wrap(cls, meth, f"main: {cls.__name__}.{meth}", marks=True)

    wrap(OutputRecorder, "_record", "main: OutputRecorder._record (nbformat output_from_msg)")
    import kernel.jupyter.durable_side as kk  # where the kernel calls it

    orig_outcome = kk.outcome_of_reply

    def outcome(*args: Any, **kwargs: Any) -> Any:
        t0 = _now()
        try:
            return orig_outcome(*args, **kwargs)
        finally:
            _add("main: kernel.jupyter.replies.outcome_of_reply (CellResult)", _now() - t0)

    kk.outcome_of_reply = outcome

    for meth, label in (("_submit", "rt: DurableRuntime._submit (coroutine)"), ("_wait_settled", "rt: DurableRuntime._wait_settled (coroutine)"),
                        ("_record_start", "rt: DurableRuntime._record_start (coroutine)")):
        orig_coro = getattr(DurableRuntime, meth, None)
        if orig_coro is None:
            continue

        def make(orig_coro: Any, label: str) -> Any:
            @functools.wraps(orig_coro)
            async def timed_coro(self: Any, *args: Any, **kwargs: Any) -> Any:
                t0 = _now()
                _mark(f"{label}:start")
                try:
                    return await orig_coro(self, *args, **kwargs)
                finally:
                    _add(label, _now() - t0)
                    _mark(f"{label}:end")

            return timed_coro

        setattr(DurableRuntime, meth, make(orig_coro, label))

    from kernel.durable.runtime import durable_execute  # noqa: F401  (registered by name at start)

    orig_dispatch = CellDispatcher.dispatch

    @functools.wraps(orig_dispatch)
    async def dispatch(self: Any, execution_id: str, params: Any) -> Any:
        _mark("rt: CellDispatcher.dispatch:start")
        try:
            return await orig_dispatch(self, execution_id, params)
        finally:
            _mark("rt: CellDispatcher.dispatch:end")

    CellDispatcher.dispatch = dispatch  # type: ignore[method-assign]

    orig_send = EmbeddedStore.send

    @functools.wraps(orig_send)
    async def send(self: Any, req: str, headers: Any = None) -> str:
        t0 = _now()
        try:
            return await orig_send(self, req, headers)
        finally:
            _add("rt: EmbeddedStore.send", _now() - t0)

    EmbeddedStore.send = send  # type: ignore[method-assign]

    orig_apply = EmbeddedStore.apply

    @functools.wraps(orig_apply)
    def apply(self: Any, flat: Any) -> Any:
        t0 = _now()
        try:
            return orig_apply(self, flat)
        finally:
            kind_ = flat.get("kind", "?") if isinstance(flat, dict) else "?"
            dt = _now() - t0
            _add("rt: EmbeddedStore.apply", dt)
            _add(f"rt: EmbeddedStore.apply [{kind_}]", dt)

    EmbeddedStore.apply = apply  # type: ignore[method-assign]
    if hasattr(EmbeddedStore, "apply_batch"):
        wrap(EmbeddedStore, "apply_batch", "EmbeddedStore.apply_batch (caller's thread)")
    wrap(EmbeddedStore, "_page_in", "rt: EmbeddedStore._page_in")
    wrap(EmbeddedStore, "_flush", "rt: EmbeddedStore._flush")
    wrap(EmbeddedStore, "_evict", "rt: EmbeddedStore._evict")
    wrap(EmbeddedStore, "tick", "rt: EmbeddedStore.tick")
    wrap(ServerState, "apply", "rt: ServerState.apply")

    orig_open = EmbeddedStore.open

    @functools.wraps(orig_open)
    def open_timed(self: Any) -> Any:
        orig_open(self)
        if not isinstance(self._db_conn, _TimedDB):
            self._db_conn = _TimedDB(self._db_conn)
        return self

    EmbeddedStore.open = open_timed  # type: ignore[method-assign]

    # Busy time of the runtime thread's event loop (every callback it runs).
    orig_run = asyncio.events.Handle._run

    def handle_run(self: Any) -> Any:
        if threading.current_thread().name != "pyrepl3-runtime":
            return orig_run(self)
        t0 = _now()
        try:
            return orig_run(self)
        finally:
            _add("rt: event-loop callbacks (busy)", _now() - t0)

    asyncio.events.Handle._run = handle_run  # type: ignore[method-assign]
    return DurableKernel


def dump() -> str:
    path = os.environ["PYREPL3_BENCH_TIMINGS"]
    data = {mid: {"marks": c["marks"], "spans": {k: list(v) for k, v in c["spans"].items()}} for mid, c in CELLS.items()}
    with open(path, "w") as f:
        json.dump(data, f)
    return path


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    kernel_class = install(os.environ.get("PYREPL3_BENCH_KIND", "pyrepl3"))
    IPKernelApp.launch_instance(kernel_class=kernel_class)
