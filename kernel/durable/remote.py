"""Remote calls from a cell: ``durable.rpc`` and ``durable.map``, as child promises of the running execution.

A call is the task promise ``exec:<msg_id>:rpc:<n>``, numbered in the order
the cell makes its calls (like its steps), routed to a worker group
(``resonate:target`` = that group's poll address), its param the sealed call
(:func:`~kernel.durable.calls.seal_call`). Any ``pyrepl3 worker`` of the group
takes it, runs it and settles the promise; the cell's :class:`RemoteHandle`
waits for that, verifies what it reads (:func:`~kernel.durable.calls.open_result`,
:func:`~kernel.durable.calls.open_failure`) and decodes it.

Creating a promise that exists returns it unchanged, so a resumed execution
(``%durable resume``, a new kernel of the session) that makes the same calls in
the same order finds the promises its first run created: a settled one gives
its stored result at once, a pending one is waited for again, and nothing is
sent twice. A stored call whose function is not the one the cell now calls
means the cell changed since it first ran: that is an error, never a silent
mix of two versions' results.

Waiting never spins: it is a future the runtime thread completes when the
engine says the promise is settled (:meth:`DurableRuntime.watch`), waited on
interruptibly (:meth:`DurableRuntime.result`). A promise past its deadline is
also read directly now and then, since an engine may notice its own timeout
late.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import math
import sys
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, NamedTuple

from resonate.types import PromiseRecord, TaskData

from kernel.checkpoint.signing import Sealer
from kernel.core import tracing
from kernel.core.clock import SYSTEM, Clock, to_ms
from kernel.core.errors import ConfigurationError
from kernel.core.ids import GROUP_TAG, KIND_TAG, REMOTE_CALL_FUNC, ChildNumbering, rpc_id, worker_group
from kernel.core.retries import RetryPolicy, retry_policy
from kernel.durable.calls import RemoteCallError, RemoteFailure, function_name, open_failure, open_result, seal_call
from kernel.durable.runtime import DurableRuntime
from kernel.store.records import task_args

log = logging.getLogger(__name__)

#: A call with ``timeout=None`` may wait this long for a worker (the engine rejects it then).
DEFAULT_TIMEOUT = 7 * 24 * 3600.0
#: Seconds past a call's deadline before its promise is read directly, and between two such reads.
LATE_READ = 1.0
#: Seconds between two updates of a ``durable.map`` progress bar (and two looks at late promises).
PROGRESS_EVERY = 0.25
#: Seconds between two looks of an ``await``ed handle (an interrupt of the cell lands between two).
AWAIT_LOOK = 0.25
#: Creates per request when ``durable.map`` sends its calls.
SEND_BATCH = 200


class RemoteTask(NamedTuple):
    """A call's task promise, as it is created."""

    id: str
    group: str
    sealed_call: dict[str, Any]
    timeout_at_ms: int


def trace_carrier() -> dict[str, str]:
    """The W3C trace context of the running span (the call's ``pyrepl3.rpc``), for the worker."""
    return tracing.carrier()


def _timeout_of(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ConfigurationError(f"timeout={timeout!r}: give seconds (a number > 0) or None")
    return float(timeout)


class RemoteHandle:
    """One remote call: returned at once by ``durable.rpc``; ``result()`` or ``await`` it.

    ``promise_id`` is the call's task promise (``pyrepl3 show`` it from anywhere)."""

    def __init__(self, runtime: DurableRuntime, sealer: Sealer, record: PromiseRecord, function: str, *, clock: Clock = SYSTEM) -> None:
        self._bound = True
        self._runtime = runtime
        self._sealer = sealer
        self._clock = clock
        self.function = function
        self._record: PromiseRecord | None = record if record.state != "pending" else None
        self._deadline = record.timeout_at / 1000.0
        self._read_at = 0.0
        self._watcher: cf.Future[PromiseRecord] | None = None if self._record is not None else runtime.watch(record.id)
        self.promise_id = record.id

    def __repr__(self) -> str:
        state = ("done" if self.done() else "pending") if self._bound else "restored"
        return f"<RemoteHandle {self.promise_id} {self.function} {state}>"

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        """A namespace checkpoint keeps the call's promise id: the handle comes back in the next
        kernel of the session, and finds the call (its result, or waits for it) when first used."""
        return _restored_handle, (self.promise_id, self.function)

    def _bind(self) -> None:
        """A restored handle: attach to this kernel's session and read the call's promise."""
        if self._bound:
            return
        calls = _SESSION[0] if _SESSION else None
        if calls is None:
            raise RemoteCallError(f"{self.promise_id} ({self.function}): durability is off in this kernel, so the call cannot be read")
        self.__init__(calls.runtime, calls.sealer, calls.runtime.get(self.promise_id), self.function, clock=calls._clock)  # type: ignore[misc]

    def done(self) -> bool:
        """Whether the call is settled (it has a result, or failed); never blocks on the engine
        (past the call's deadline, the promise is read now and then)."""
        return self._settled() is not None

    def _settled(self) -> PromiseRecord | None:
        self._bind()
        if self._watcher is not None and self._watcher.cancelled():
            self._watcher = self._runtime.watch(self.promise_id)
        if self._record is None and self._watcher is not None and self._watcher.done():
            try:
                self._record = self._watcher.result()
            except Exception as exc:  # noqa: BLE001 - the watch failed (engine lost): read, then watch again
                log.info("watching %s failed (%s); reading it once a second until a watch holds", self.promise_id, exc)
                self._watcher = None
        if self._record is None and (self._watcher is None or self._clock.wall() >= self._deadline + LATE_READ):
            self._read_directly()
        return self._record

    def _read_directly(self) -> None:
        """At most once a second: read the promise (an engine may settle a timed-out promise
        before it tells its listeners), and watch it again if the watch failed."""
        now = self._clock.monotonic()
        if now - self._read_at < LATE_READ:
            return
        self._read_at = now
        try:
            record = self._runtime.get(self.promise_id)
        except Exception:  # noqa: BLE001 - the next look tries again
            log.debug("reading %s failed", self.promise_id, exc_info=True)
            return
        if record.state != "pending":
            self._record = record
        elif self._watcher is None:
            self._watcher = self._runtime.watch(self.promise_id)

    def result(self, timeout: float | None = None) -> Any:
        """The call's result, once a worker has settled it (verified before it is decoded).

        Raises :class:`RemoteFailure` (the worker's error type, message, traceback and
        attempt count) for a call that failed, ``TimeoutError`` for one the engine timed
        out, and ``TimeoutError`` too when ``timeout`` seconds pass first here (the call
        goes on: ask again). Ctrl-C (an interrupt) stops the wait, not the call."""
        self._bind()
        until = None if timeout is None else self._clock.monotonic() + timeout
        while (record := self._settled()) is None:
            left = None if until is None else until - self._clock.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"{self.promise_id} ({self.function}) has not finished after {timeout:g}s; it goes on (ask again)")
            step = max(LATE_READ, self._deadline + LATE_READ - self._clock.wall())
            step = step if left is None else min(step, left)
            if self._watcher is None:
                self._clock.sleep(min(step, LATE_READ))
                continue
            try:
                self._runtime.result(self._watcher, step)
            except (cf.TimeoutError, TimeoutError):
                pass
        return self._outcome(record)

    def _outcome(self, record: PromiseRecord) -> Any:
        data = record.value.data if record.value is not None else None
        if record.state == "resolved":
            return open_result(self._sealer, self.promise_id, data)
        if record.state == "rejected_timedout":
            raise TimeoutError(f"{self.promise_id} ({self.function}) timed out: no worker finished it by its deadline")
        if record.state == "rejected_canceled":
            raise RemoteFailure(f"{self.promise_id} ({self.function}) was canceled")
        raise open_failure(self._sealer, self.promise_id, data)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await handle`` in a cell: waits on the kernel's own loop without blocking it."""
        return self._wait().__await__()

    async def _wait(self) -> Any:
        # In short waits: ipykernel cancels an interrupted cell's task, which lands only when
        # the task next resumes. asyncio.wait never cancels the future it waits on.
        watched: tuple[Any, Any] = (None, None)
        while self._settled() is None:
            watcher = self._watcher
            if watcher is None or watcher.done():  # the watch failed: the promise is read when late
                await asyncio.sleep(LATE_READ)
                continue
            if watched[0] is not watcher:
                watched = (watcher, asyncio.wrap_future(watcher))
            await asyncio.wait({watched[1]}, timeout=AWAIT_LOOK)
        return self.result()


def _restored_handle(promise_id: str, function: str) -> RemoteHandle:
    """Unpickling a handle (a restored namespace): no I/O until it is used (see ``_bind``)."""
    handle = RemoteHandle.__new__(RemoteHandle)
    handle._bound, handle.promise_id, handle.function = False, promise_id, function
    return handle


#: The remote calls of this kernel's durable session, which restored handles attach to
#: (unpickling can reach nothing else); set by :meth:`RemoteCalls.serve_restored`.
_SESSION: list[RemoteCalls] = []


class RemoteCalls(ChildNumbering):
    """The remote calls of the running execution, numbered like its steps.

    ``refusal``: why this store cannot have workers (the embedded one), raised as
    :class:`ConfigurationError` by every call; ``progress``: where the progress
    bar of ``durable.map`` is written."""

    def __init__(
        self,
        runtime: DurableRuntime,
        sealer: Sealer,
        *,
        refusal: str | None = None,
        clock: Clock = SYSTEM,
        progress: Callable[[], Any] = lambda: sys.stderr,
        trace: Callable[[], dict[str, str]] = trace_carrier,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.sealer = sealer
        self.refusal = refusal
        self._clock = clock
        self._progress = progress
        self._trace = trace

    def serve_restored(self) -> RemoteCalls:
        """Make this the session that handles restored from a namespace checkpoint attach to."""
        _SESSION[:] = [self]
        return self

    def _task(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], group: str, policy: RetryPolicy, timeout: float | None) -> RemoteTask:
        pid = self.next_child(rpc_id, "durable.rpc")
        with tracing.span(tracing.RPC, promise_id=pid, group=group, function=function_name(fn)):
            sealed = seal_call(
                self.sealer, pid, fn, args, kwargs, retries=policy, timeout=timeout, trace=self._trace(), sent_at=self._clock.wall()
            )
        return RemoteTask(pid, group, sealed, to_ms(self._clock.wall() + (DEFAULT_TIMEOUT if timeout is None else timeout)))

    def _create(self, tasks: list[RemoteTask]) -> list[PromiseRecord]:
        """The task promises of rpc13: routed to the group's workers; origin, branch and parent are
        the call itself (the cell's execution is not an SDK-suspended parent)."""
        created = []
        for t in tasks:
            route = {"resonate:scope": "global", "resonate:target": self.runtime.target_of(t.group)}
            lineage = dict.fromkeys(("resonate:origin", "resonate:branch", "resonate:parent"), t.id)
            tags = {**route, **lineage, KIND_TAG: "rpc", GROUP_TAG: t.group}
            created.append((t.id, t.timeout_at_ms, TaskData(func=REMOTE_CALL_FUNC, args=(t.sealed_call,)), tags))
        return self.runtime.create_many(created, what="sending remote calls")

    def _checked(self, group: str, retries: Any, timeout: Any) -> tuple[str, RetryPolicy, float | None]:
        if self.refusal is not None:
            raise ConfigurationError(f"durable.rpc: {self.refusal}")
        if self.execution_id is None:
            raise RemoteCallError("durable.rpc and durable.map can only be used inside a cell's execution")
        return worker_group(group), retry_policy(retries), _timeout_of(timeout)

    def _handles(self, fn: Any, tasks: list[RemoteTask]) -> list[RemoteHandle]:
        name = function_name(fn)
        handles = []
        for record in self._create(tasks):
            stored = _stored_function(record)
            if stored != name:
                raise RemoteCallError(
                    f"{record.id} was sent as a call of {stored} when this execution first ran; the cell now calls {name} "
                    "there: the cell changed since (re-run it as a new execution instead of resuming it)"
                )
            handles.append(RemoteHandle(self.runtime, self.sealer, record, name, clock=self._clock))
        return handles

    def rpc(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, group: str, retries: Any = None, timeout: Any = None) -> RemoteHandle:
        """Send ``fn(*args, **kwargs)`` to a worker of ``group``; the handle comes back at once."""
        group, policy, seconds = self._checked(group, retries, timeout)
        return self._handles(fn, [self._task(fn, args, kwargs, group, policy, seconds)])[0]

    def map(
        self,
        fn: Callable[..., Any],
        items: Iterable[Any],
        *,
        group: str,
        retries: Any = None,
        timeout: Any = None,
        progress: bool = True,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``[fn(item) for item in items]`` on the workers of ``group``, in order.

        Every call is sent first (in batches of creates where the engine takes them),
        then the results are collected as they arrive (a progress bar on stderr), and
        returned in the order of ``items``. A failure is raised only once every call
        has settled -- the others' results are stored by then, so a resumed execution
        gets them without sending them again -- as the first failed item's own error,
        with a note of how many failed; ``return_exceptions=True`` puts each error in
        its item's place instead."""
        group, policy, seconds = self._checked(group, retries, timeout)
        items = list(items)
        if not items:
            return []
        handles: list[RemoteHandle] = []
        for start in range(0, len(items), SEND_BATCH):
            chunk = items[start : start + SEND_BATCH]
            handles += self._handles(fn, [self._task(fn, (item,), {}, group, policy, seconds) for item in chunk])
        self._collect(handles, f"durable.map({function_name(fn)}) on {group}" if progress else None)
        results: list[Any] = []
        failed: list[tuple[int, BaseException]] = []
        for i, handle in enumerate(handles):
            try:
                results.append(handle.result())
            except (RemoteFailure, TimeoutError) as exc:
                failed.append((i, exc))
                results.append(exc)
        if failed and not return_exceptions:
            i, first = failed[0]
            first.add_note(f"durable.map: {len(failed)} of {len(handles)} calls failed; this is item {i} ({handles[i].promise_id})")
            raise first
        return results

    def _collect(self, handles: list[RemoteHandle], title: str | None) -> None:
        """Wait until every call is settled, a progress bar (``title``) counting them as they are."""
        tally = _Tally(handles)
        bar = None
        if title is not None:
            from tqdm.std import tqdm

            bar = tqdm(total=len(handles), desc=title, file=self._progress(), mininterval=PROGRESS_EVERY, dynamic_ncols=False, ncols=100)
        try:
            while (count := tally.count()) < len(handles):
                if bar is not None:
                    bar.update(count - bar.n)
                if tally.all_done.done():  # every watch ended, some failed: their promises are read, once a second
                    self._clock.sleep(PROGRESS_EVERY)
                    continue
                try:
                    self.runtime.result(tally.all_done, PROGRESS_EVERY)
                except (cf.TimeoutError, TimeoutError):
                    pass
            if bar is not None:
                bar.update(len(handles) - bar.n)
        finally:
            if bar is not None:
                bar.close()


class _Tally:
    """How many of a map's calls are settled, and a future done once all are (completed by the runtime thread)."""

    def __init__(self, handles: list[RemoteHandle]) -> None:
        self._handles = handles
        self._lock = threading.Lock()
        self._settled = 0
        self.all_done: cf.Future[None] = cf.Future()
        watched = [h._watcher for h in handles if h._record is None and h._watcher is not None]
        self._left = len(watched)
        if not watched:
            self.all_done.set_result(None)
        for watcher in watched:
            watcher.add_done_callback(self._one_done)

    def _one_done(self, _: cf.Future[Any]) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0 and not self.all_done.done():
                self.all_done.set_result(None)

    def count(self) -> int:
        """Settled calls (reading late ones directly, see :meth:`RemoteHandle.done`)."""
        return sum(1 for h in self._handles if h.done())


def _stored_function(record: PromiseRecord) -> str:
    """The function name in a stored task's call (read, not verified: nothing of it is run or
    decoded here; the worker verifies the call, the handle verifies the result)."""
    return str(task_args(record.param.data if record.param is not None else None).get("function", "?"))


__all__ = ["DEFAULT_TIMEOUT", "RemoteCalls", "RemoteHandle", "trace_carrier"]
