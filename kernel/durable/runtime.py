"""The durable runtime: a Resonate instance on its own event-loop thread.

Cell code must run on the kernel's main thread (IPython, signals, GUI loops),
while Resonate needs an asyncio loop of its own. The kernel therefore *asks*
for a cell by creating the durable promise ``exec:<msg_id>``; the engine
delivers that task to ``durable_execute`` here, which hands the execution to the
main thread through the :class:`CellDispatcher` and settles the promise with
the outcome it gets back. An execution nobody in this process is waiting for
(one left pending by a kernel that died) reaches ``durable_execute`` too, and
is settled by the dispatcher's orphan policy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import logging
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from resonate.context import Context
from resonate.connections.sse import resolve_target as poll_target
from resonate.resonate import Resonate
from resonate.error import ServerError
from resonate.retry import Never
from resonate.types import PromiseRecord, TaskData, Value
from resonate_base.connections import Network, Source
from resonate_base.error import ConnectorError

from kernel.core.ids import SESSION_TAG, exec_id
from kernel.core.errors import DependencyNotRegisteredError, EngineConnectionError, PromiseTimeoutError
from kernel.core.models import CellError, CellOutcome, CellResult, ExecutionParams, ResolvedPromise

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long an execution promise may stay pending before the engine times it out.
EXECUTION_TIMEOUT = timedelta(days=7)


class NoPickledErrors:
    """The SDK codec's ``Encryptor`` seam, used to keep pickles out of promise values.

    The SDK stores a rejected promise's exception as JSON plus a
    ``__py_pickle`` payload, and unpickles that payload when a result is
    awaited: whoever can write the engine's promises could then run code in
    this kernel. PyREPL3 carries errors as JSON (:class:`CellError`), so the
    payload is dropped both on the way out and on the way in. The byte search
    keeps the common case (no error payload) a no-op.
    """

    MARK = b'"__py_pickle"'

    def encrypt(self, data: bytes) -> bytes:
        return self._strip(data)

    def decrypt(self, data: bytes) -> bytes:
        return self._strip(data)

    def _strip(self, data: bytes) -> bytes:
        if self.MARK not in data:
            return data
        value = json.loads(data)
        if isinstance(value, dict):
            value.pop("__py_pickle", None)
        return json.dumps(value).encode()


class CellFailed(Exception):
    """Raised by ``durable_execute`` to reject ``exec:<msg_id>``; its message is
    the :class:`CellError` as JSON, so the structure survives the engine."""

    def __init__(self, error: CellError | str) -> None:
        super().__init__(error if isinstance(error, str) else error.model_dump_json())


@dataclass
class Handoff:
    """What the main thread receives when its execution starts."""

    params: ExecutionParams
    outcome: cf.Future[CellOutcome]


@dataclass
class Orphan:
    """An execution delivered to this process that no request here is waiting
    for: one left pending by a kernel that died. The kernel decides its fate by
    completing ``outcome`` (resume it, or reject it as interrupted)."""

    params: ExecutionParams
    outcome: cf.Future[CellOutcome]

    @property
    def execution_id(self) -> str:
        return exec_id(self.params.msg_id)


def interrupted_by_exit(params: ExecutionParams, detail: str = "") -> CellError:
    """The structured error an execution gets when its kernel died during it."""
    return CellError(
        execution_id=exec_id(params.msg_id),
        execution_count=params.execution_count,
        ename="KernelExitInterruption",
        evalue=(
            f"execution {params.execution_count} ({exec_id(params.msg_id)}) was interrupted "
            f"by kernel exit before it finished{detail}"
        ),
    )


class CellDispatcher:
    """Meets ``durable_execute`` (runtime thread) and the kernel (main thread)."""

    def __init__(self) -> None:
        self._waiting: dict[str, cf.Future[Handoff]] = {}
        self._orphans: dict[str, Orphan] = {}
        self._recent: dict[str, cf.Future[CellOutcome]] = {}
        self._lock = threading.Lock()
        self._orphan_arrived = threading.Condition(self._lock)

    def expect(self, execution_id: str) -> cf.Future[Handoff]:
        fut: cf.Future[Handoff] = cf.Future()
        with self._lock:
            self._waiting[execution_id] = fut
        return fut

    def abandon(self, ticket: cf.Future[Handoff], error: CellOutcome) -> None:
        """The kernel will not run this execution: settle it with ``error``
        whenever (or if already) the engine delivers it, so it is never left pending."""

        def settle(done: cf.Future[Handoff]) -> None:
            outcome = done.result().outcome
            if not outcome.done():
                outcome.set_result(error)

        ticket.add_done_callback(settle)

    def forget(self, execution_id: str) -> None:
        with self._lock:
            self._waiting.pop(execution_id, None)

    async def dispatch(self, execution_id: str, params: ExecutionParams) -> CellOutcome:
        with self._lock:
            ticket = self._waiting.pop(execution_id, None)
            if ticket is None:
                orphan = self._orphans.get(execution_id)
                if orphan is None or orphan.outcome.done():
                    orphan = Orphan(params, cf.Future())
                    self._orphans[execution_id] = orphan
                    self._orphan_arrived.notify_all()
        if ticket is None:
            self._remember(execution_id, orphan.outcome)
            return await asyncio.wrap_future(orphan.outcome)
        outcome: cf.Future[CellOutcome] = cf.Future()
        self._remember(execution_id, outcome)
        ticket.set_result(Handoff(params, outcome))
        return await asyncio.wrap_future(outcome)

    #: How many recent outcomes :meth:`outcome_of` remembers.
    REMEMBERED = 32

    def _remember(self, execution_id: str, outcome: cf.Future[CellOutcome]) -> None:
        with self._lock:
            self._recent[execution_id] = outcome
            while len(self._recent) > self.REMEMBERED:
                self._recent.pop(next(iter(self._recent)))

    def outcome_of(self, execution_id: str) -> CellOutcome | None:
        """The outcome this process handed the engine for ``execution_id`` (one of
        the last few): when the engine was lost before storing it, the session
        that reconnects stores it then."""
        with self._lock:
            fut = self._recent.get(execution_id)
        return fut.result() if fut is not None and fut.done() and not fut.cancelled() else None

    def take_orphan(self, execution_id: str, timeout: float) -> Orphan | None:
        """Wait up to ``timeout`` for the engine to deliver an expected orphan."""
        with self._lock:
            self._orphan_arrived.wait_for(lambda: execution_id in self._orphans, timeout)
            return self._orphans.pop(execution_id, None)


class ExecutionServices:
    """The collaborators of one execution, built fresh for it by the factory."""

    def __init__(self, ctx: Context, dispatcher: CellDispatcher) -> None:
        self.ctx = ctx
        self.execution_id = ctx.info.id
        self._dispatcher = dispatcher

    async def run_cell(self, params: ExecutionParams) -> CellOutcome:
        return await self._dispatcher.dispatch(self.execution_id, params)


class ExecutionServicesFactory:
    """Registered in the SDK's dependency map; called once per execution
    (the spec's factory pattern: no shared object that needs initializing)."""

    def __init__(self, dispatcher: CellDispatcher) -> None:
        self.dispatcher = dispatcher

    def __call__(self, ctx: Context) -> ExecutionServices:
        return ExecutionServices(ctx, self.dispatcher)


async def durable_execute(ctx: Context, params: dict[str, Any]) -> dict[str, Any]:
    """The durable function every cell runs through; its promise is ``exec:<msg_id>``."""
    try:
        factory = ctx.get_dependency(ExecutionServicesFactory)
    except KeyError:
        error = CellError(
            execution_id=ctx.info.id,
            ename="DependencyNotRegisteredError",
            evalue=str(DependencyNotRegisteredError("ExecutionServicesFactory is not registered")),
            code=DependencyNotRegisteredError.code,
        )
        raise CellFailed(error) from None
    outcome = await factory(ctx).run_cell(ExecutionParams.model_validate(params))
    if isinstance(outcome, CellError):
        raise CellFailed(outcome)
    return outcome.model_dump(mode="json")


class DurableRuntime:
    """Owns the Resonate instance and its loop thread; synchronous facade for the kernel.

    ``network`` is the engine (the embedded store, resonate-pg, or HTTP);
    ``sources`` defaults to the network itself when it can push messages.
    """

    def __init__(
        self,
        network: Network,
        *,
        session: str,
        dispatcher: CellDispatcher,
        sources: list[Source] | None = None,
        pid: str | None = None,
        group: str = "pyrepl3",
        ttl: timedelta = timedelta(seconds=30),
        call_timeout: float = 30.0,
    ) -> None:
        self.network = network
        self.session = session
        self.dispatcher = dispatcher
        self.group = group
        self._sources = sources if sources is not None else ([network] if isinstance(network, Source) else [])
        self._pid = pid
        self._ttl = ttl
        self.call_timeout = call_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pyrepl3-runtime", daemon=True)
        self.resonate: Resonate | None = None
        self.target = ""

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> DurableRuntime:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        resonate = Resonate(
            network=self.network,
            sources=self._sources,
            pid=self._pid,
            group=self.group,
            ttl=self._ttl,
            retry_policy=Never(),
            encryptor=NoPickledErrors(),
            env={},
            autostart=False,
        )
        resonate.register(durable_execute, retry_policy=Never())
        resonate.with_dependency(ExecutionServicesFactory(self.dispatcher))
        self.target = (
            self._sources[0].resolve_target(self.group) if self._sources else poll_target(self.group)
        )
        self.resonate = resonate
        resonate.start()

    def stop(self) -> None:
        if self.resonate is not None and self._thread.is_alive():
            try:
                self.call(self.resonate.stop(), timeout=5)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                log.debug("runtime stop failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the runtime loop and wait for it (from any other thread)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(self.call_timeout if timeout is None else timeout)
        except cf.TimeoutError:
            fut.cancel()
            raise PromiseTimeoutError("the durable engine did not answer in time") from None
        except ConnectorError as exc:
            # The engine is unreachable (RES004). Connectors put a redacted
            # EngineConnectionError inside; anything else is named by type only.
            inner = exc.error
            raise (inner if isinstance(inner, EngineConnectionError) else EngineConnectionError(
                f"the durable engine is unreachable ({type(inner).__name__})"
            )) from None

    # -- executions -----------------------------------------------------------

    def submit(self, params: ExecutionParams) -> PromiseRecord:
        """Create ``exec:<msg_id>`` as a task for ``durable_execute`` (idempotent)."""
        return self.call(self._submit(params))

    async def _submit(self, params: ExecutionParams) -> PromiseRecord:
        assert self.resonate is not None
        eid = exec_id(params.msg_id)
        now = int(time.time() * 1000)
        return await self.resonate.promises.create(
            eid,
            now + int(EXECUTION_TIMEOUT.total_seconds() * 1000),
            Value(data=TaskData(func="durable_execute", args=(params.model_dump(mode="json"),))),
            {
                "resonate:scope": "global",
                "resonate:target": self.target,
                "resonate:origin": eid,
                "resonate:branch": eid,
                "resonate:parent": eid,
                SESSION_TAG: self.session,
            },
        )

    def wait_settled(self, promise_id: str, timeout: float | None = None) -> PromiseRecord:
        """Block until the promise is settled; return its (decoded) record."""
        return self.call(self._wait_settled(promise_id), timeout=timeout)

    async def _wait_settled(self, promise_id: str, *, read: bool = True) -> Any:
        assert self.resonate is not None
        handle = await self.resonate.get(promise_id)
        try:
            await handle.result()
        except Exception:  # noqa: BLE001 - a rejection is an outcome here, not an error
            pass
        return await self.resonate.promises.get(promise_id) if read else None

    def get(self, promise_id: str) -> PromiseRecord:
        assert self.resonate is not None
        return self.call(self.resonate.promises.get(promise_id))

    def find(self, promise_id: str) -> PromiseRecord | None:
        """Like :meth:`get`, but ``None`` when the promise does not exist."""
        try:
            return self.get(promise_id)
        except ServerError as exc:
            if exc.code == 404:
                return None
            raise

    def create(self, promise_id: str, timeout_at_ms: int, data: Any, tags: dict[str, str]) -> PromiseRecord:
        """Create a plain promise (idempotent: an existing one is returned unchanged)."""
        assert self.resonate is not None
        return self.call(
            self.resonate.promises.create(promise_id, timeout_at_ms, Value(data=data), {**tags, SESSION_TAG: self.session})
        )

    def settle(self, promise_id: str, state: str, data: Any) -> PromiseRecord:
        """Resolve, reject or cancel; a promise settled already is returned as it is."""
        assert self.resonate is not None
        promises = self.resonate.promises
        op = {"resolved": promises.resolve, "rejected": promises.reject, "rejected_canceled": promises.cancel}[state]
        return self.call(op(promise_id, Value(data=data)))

    def store_resolved(self, promises: list[ResolvedPromise], *, after: str | None = None) -> None:
        """Create and resolve ``promises`` -- after ``after`` is settled, if given --
        in one trip to the runtime thread (the end of every cell does this)."""
        self.call(self._store_resolved(promises, after))

    async def _store_resolved(self, promises: list[ResolvedPromise], after: str | None) -> None:
        assert self.resonate is not None
        if after is not None:
            await self._wait_settled(after, read=False)
        api = self.resonate.promises
        for p in promises:
            await api.create(p.id, p.timeout_at_ms, Value(data=p.param), {**p.tags, SESSION_TAG: self.session})
            await api.resolve(p.id, Value(data=p.value))

    def watch(self, promise_id: str) -> cf.Future[PromiseRecord]:
        """A future that completes with the record once the promise is settled,
        however it gets settled (here, by another process, or by its timeout)."""
        return asyncio.run_coroutine_threadsafe(self._wait_settled(promise_id), self._loop)


__all__ = [
    "CellDispatcher",
    "CellFailed",
    "CellResult",
    "DurableRuntime",
    "ExecutionServicesFactory",
    "Handoff",
    "durable_execute",
]
