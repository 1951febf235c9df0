"""The durable runtime: a Resonate instance on its own event-loop thread.

Cell code must run on the kernel's main thread (IPython, signals, GUI loops),
while Resonate needs an asyncio loop of its own. The kernel therefore *asks*
for a cell by creating the durable promise ``exec:<msg_id>``; the engine
delivers that task to ``durable_execute`` here, which hands the execution to the
main thread through the :class:`~kernel.durable.dispatcher.CellDispatcher` and settles the promise with
the outcome it gets back. An execution nobody in this process is waiting for
(one left pending by a kernel that died) reaches ``durable_execute`` too, and
is settled by the dispatcher's orphan policy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import threading
from collections.abc import Coroutine
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

from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import DependencyNotRegisteredError, EngineConnectionError, PromiseTimeoutError, StoreUnavailableError
from kernel.core.ids import SESSION_TAG, exec_id, started_id
from kernel.core.models import CellError, CellOutcome, ExecutionParams, ResolvedPromise
from kernel.durable.codec import NoPickledErrors
from kernel.durable.dispatcher import CellDispatcher
from kernel.durable.inline import AppliesBatch, AppliesInline, Batch, checked, record_of
from kernel.core.interrupts import MAIN, Interrupts

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long an execution promise may stay pending before the engine times it out.
EXECUTION_TIMEOUT = timedelta(days=7)
#: Seconds after the end of a cell (stored) before its task's own end runs (:meth:`DurableRuntime.hand_later`).
TASK_END_DELAY = 0.005


class CellFailed(Exception):
    """Raised by ``durable_execute`` to reject ``exec:<msg_id>``; its message is
    the :class:`CellError` as JSON, so the structure survives the engine."""

    def __init__(self, error: CellError | str) -> None:
        super().__init__(error if isinstance(error, str) else error.model_dump_json())


def _unreachable(inner: BaseException) -> EngineConnectionError:
    """The engine is unreachable (RES004). Connectors put a redacted
    EngineConnectionError inside; anything else is named by type only."""
    return inner if isinstance(inner, EngineConnectionError) else EngineConnectionError(
        f"the durable engine is unreachable ({type(inner).__name__})"
    )


class ExecutionServices:
    """The collaborators of one execution, built fresh for it by the factory."""

    def __init__(self, ctx: Context, dispatcher: CellDispatcher) -> None:
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
        clock: Clock = SYSTEM,
        interrupts: Interrupts = MAIN,
    ) -> None:
        self.network = network
        self.session = session
        self.dispatcher = dispatcher
        self.group = group
        self._sources = sources if sources is not None else ([network] if isinstance(network, Source) else [])
        self._pid = pid
        self._ttl = ttl
        self.call_timeout = call_timeout
        self._clock = clock
        self._interrupts = interrupts
        #: An engine this thread writes to directly (embedded), or in one trip (Postgres): see :mod:`kernel.durable.inline`.
        self._inline = network if isinstance(network, AppliesInline) else None
        self._batched = network if isinstance(network, AppliesBatch) else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pyrepl3-runtime", daemon=True)
        self.resonate: Resonate | None = None
        self.target = ""
        # The main thread records its hand-off itself where it writes directly (record_start).
        dispatcher.on_handoff = None if self._inline is not None else self._record_start

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
        self.target = self.target_of(self.group)
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
        """Run a coroutine on the runtime loop and wait for it (from any other thread;
        on the main thread an interrupt ends the wait, never inside the future's lock:
        :mod:`kernel.core.interrupts`)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return self._interrupts.wait(fut, self.call_timeout if timeout is None else timeout)
        except cf.TimeoutError:
            fut.cancel()
            raise PromiseTimeoutError("the durable engine did not answer in time") from None
        except ConnectorError as exc:
            raise _unreachable(exc.error) from None

    def result(self, fut: cf.Future[T], timeout: float | None = None) -> T:
        """Wait for a future the runtime thread completes (``TimeoutError`` when ``timeout``
        passes); on the main thread an interrupt ends the wait outside the future's lock."""
        return self._interrupts.wait(fut, timeout)

    # -- executions -----------------------------------------------------------

    def submit(self, params: ExecutionParams, timeout: float | None = None) -> PromiseRecord:
        """Create ``exec:<msg_id>`` as a task for ``durable_execute`` (idempotent); written
        on this thread where the engine allows it, the task's delivery still on the loop."""
        if self._inline is not None:
            eid = exec_id(params.msg_id)
            batch = self.batch().create(eid, self._clock.ms_after(EXECUTION_TIMEOUT), self._task_of(params), self._task_tags(eid))
            return record_of(self._codec, self.apply(batch, what=f"the submit of {eid}")[0])
        return self.call(self._submit(params), timeout=timeout)

    @staticmethod
    def _task_of(params: ExecutionParams) -> TaskData:
        return TaskData(func="durable_execute", args=(params.model_dump(mode="json"),))

    def _task_tags(self, eid: str) -> dict[str, str]:
        return {
            "resonate:scope": "global",
            "resonate:target": self.target,
            "resonate:origin": eid,
            "resonate:branch": eid,
            "resonate:parent": eid,
            SESSION_TAG: self.session,
        }

    def target_of(self, group: str) -> str:
        """The ``resonate:target`` that routes a task to ``group`` (a kernel's, or workers' for remote calls)."""
        return self._sources[0].resolve_target(group) if self._sources else poll_target(group)

    def create_many(self, promises: list[tuple[str, int, Any, dict[str, str]]], *, what: str) -> list[PromiseRecord]:
        """Create promises (id, timeout_at_ms, param, tags; idempotent: an existing one comes
        back as it is), in one batch where the engine takes batches, else one by one."""
        if not self.atomic:
            return [self.create(*p) for p in promises]
        batch = self.batch()
        for p in promises:
            batch.create(*p)
        return [record_of(self._codec, r) for r in self.apply(batch, what=what)]

    async def _submit(self, params: ExecutionParams) -> PromiseRecord:
        assert self.resonate is not None
        eid = exec_id(params.msg_id)
        return await self.resonate.promises.create(
            eid, self._clock.ms_after(EXECUTION_TIMEOUT), Value(data=self._task_of(params)), self._task_tags(eid)
        )

    def _started(self, execution_id: str) -> Batch:
        pid = started_id(execution_id)
        return self.batch().create(pid, self._clock.ms_after(EXECUTION_TIMEOUT), None, {}).settle(pid, "resolved", {"at": self._clock.wall()})

    def record_start(self, execution_id: str) -> None:
        """Store ``exec:<msg_id>:started`` from the main thread, which has the hand-off,
        where it writes directly (elsewhere the loop does, :meth:`_record_start`, before the
        hand-off's ``recorded`` is done). Only a started execution is ever resumed
        (:mod:`kernel.durable.resume`); without the record it is not: at most once."""
        if self._inline is None:
            return
        try:
            self.apply(self._started(execution_id), what=f"the record that {execution_id} started")
        except Exception:  # noqa: BLE001 - as the loop's record: the cell runs, it is just not resumable
            log.warning("could not record that %s started; it will not be resumed if this kernel dies", execution_id, exc_info=True)

    async def _record_start(self, execution_id: str) -> None:
        """Store ``exec:<msg_id>:started`` (on the loop, once the main thread has this
        execution): in one request where the engine takes batches."""
        assert self.resonate is not None
        if self._batched is not None:
            batch = self._started(execution_id)
            checked(await self._batched.send_batch(batch.flats))
            return
        pid = started_id(execution_id)
        await self.resonate.promises.create(pid, self._clock.ms_after(EXECUTION_TIMEOUT), Value(data=None), {SESSION_TAG: self.session})
        await self.resonate.promises.resolve(pid, Value(data={"at": self._clock.wall()}))

    # -- batches: several writes as one unit ---------------------------------------

    @property
    def _codec(self) -> Any:
        assert self.resonate is not None
        return self.resonate.promises.codec

    @property
    def atomic(self) -> bool:
        """The engine stores a batch of requests as one unit (one transaction)."""
        return self._inline is not None or self._batched is not None

    def batch(self) -> Batch:
        return Batch(self._codec, {SESSION_TAG: self.session})

    def apply(self, batch: Batch, *, what: str) -> list[dict[str, Any]]:
        """Store ``batch`` as one unit: on this thread where the engine allows it (interrupts
        held: the write is one unit), else in one trip to the loop. Raises like the SDK's
        requests: ``ServerError`` for a refused one, RES004 for an unreachable engine."""
        if self._inline is not None:
            with self._interrupts.deferred(redeliver=True, what=what):
                try:
                    return checked(self._inline.apply_batch(batch.flats, fulfilled_later=batch.fulfilled_later))
                except StoreUnavailableError as exc:
                    raise _unreachable(exc) from None
        if self._batched is None:
            raise TypeError(f"the engine {type(self.network).__name__} does not take batches")
        engine = self._batched
        return checked(self.call(engine.send_batch(batch.flats, fulfilled_later=batch.fulfilled_later)))

    def settle_cell(self, checkpoint: ResolvedPromise | None, execution_id: str, outcome: CellOutcome) -> None:
        """Store ``checkpoint`` and settle ``execution_id`` with ``outcome`` as one unit (one
        transaction, :attr:`atomic` engines only), with the value ``durable_execute`` would
        settle it with; the SDK's fulfill of its task, later, is answered as done."""
        batch = self.batch()
        if checkpoint is not None:
            batch.create(checkpoint.id, checkpoint.timeout_at_ms, checkpoint.param, checkpoint.tags)
            batch.settle(checkpoint.id, "resolved", checkpoint.value)
        if isinstance(outcome, CellError):
            batch.settle(execution_id, "rejected", CellFailed(outcome), task=True)
        else:
            batch.settle(execution_id, "resolved", outcome.model_dump(mode="json"), task=True)
        self.apply(batch, what=f"the end of {execution_id}")

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

    def create_settled(self, promise_id: str, timeout_at_ms: int, param: Any, tags: dict[str, str], state: str, value: Any) -> None:
        """Create a promise and settle it as one unit (a finished durable step): on this
        thread where the engine allows it, else in one trip to the runtime thread; an
        existing one keeps what it holds (both requests are idempotent). Nothing is read
        back: the caller has the value."""
        if self.atomic:
            self.apply(self.batch().create(promise_id, timeout_at_ms, param, tags).settle(promise_id, state, value), what="a durable step's write")
        else:
            self.call(self._create_settled(promise_id, timeout_at_ms, param, tags, state, value))

    async def _create_settled(self, promise_id: str, timeout_at_ms: int, param: Any, tags: dict[str, str], state: str, value: Any) -> None:
        assert self.resonate is not None
        promises = self.resonate.promises
        op = {"resolved": promises.resolve, "rejected": promises.reject}[state]
        await promises.create(promise_id, timeout_at_ms, Value(data=param), {**tags, SESSION_TAG: self.session})
        await op(promise_id, Value(data=value))

    def store_resolved(self, promises: list[ResolvedPromise]) -> None:
        """Create and resolve ``promises`` in one trip to the runtime thread (the
        end of every cell stores its checkpoint so)."""
        self.call(self._store_resolved(promises))

    async def _store_resolved(self, promises: list[ResolvedPromise]) -> None:
        assert self.resonate is not None
        api = self.resonate.promises
        for p in promises:
            await api.create(p.id, p.timeout_at_ms, Value(data=p.param), {**p.tags, SESSION_TAG: self.session})
            await api.resolve(p.id, Value(data=p.value))

    @property
    def lease_seconds(self) -> float:
        return self._ttl.total_seconds()

    def confirm_settled(self, execution_id: str, outcome: CellOutcome, grace: float) -> None:
        """Wait until ``exec:<msg_id>`` is settled with ``outcome`` (which the main thread
        has just handed to ``durable_execute``); if the engine has not settled it after
        ``grace`` seconds, settle it directly with the same value.

        The SDK settles an execution with its *task*: a cell that held the GIL past its
        lease has lost that task (its heartbeat could not run), the fulfill is refused, and
        the promise would stay pending. The dispatcher hands a re-delivered task the same
        outcome; settling the promise itself covers an engine that does not re-deliver in
        time. Either way the stored value is the same one (settling is idempotent)."""
        self.call(self._confirm_settled(execution_id, outcome, grace), timeout=grace + self.call_timeout)

    async def _confirm_settled(self, execution_id: str, outcome: CellOutcome, grace: float) -> None:
        assert self.resonate is not None
        try:
            await asyncio.wait_for(self._wait_settled(execution_id, read=False), grace)
            return
        except TimeoutError:
            pass
        log.warning("%s was not settled through its task within %gs (a lost lease?); settling it directly", execution_id, grace)
        promises = self.resonate.promises
        if isinstance(outcome, CellError):
            await promises.reject(execution_id, Value(data=CellFailed(outcome)))
        else:
            await promises.resolve(execution_id, Value(data=outcome.model_dump(mode="json")))

    def hand_later(self, fut: cf.Future[T], value: T, delay: float = TASK_END_DELAY) -> None:
        """Complete ``fut`` (an execution's outcome, already stored) on the loop ``delay``
        seconds from now: the SDK's end of that task then does not take the GIL from the
        main thread while it sends the reply."""

        def complete() -> None:
            with contextlib.suppress(cf.InvalidStateError):
                if not fut.done():
                    fut.set_result(value)

        self._loop.call_soon_threadsafe(self._loop.call_later, delay, complete)

    def watch(self, promise_id: str) -> cf.Future[PromiseRecord]:
        """A future that completes with the record once the promise is settled,
        however it gets settled (here, by another process, or by its timeout)."""
        return asyncio.run_coroutine_threadsafe(self._wait_settled(promise_id), self._loop)


__all__ = [
    "CellFailed",
    "DurableRuntime",
    "ExecutionServicesFactory",
    "ResolvedPromise",
    "durable_execute",
]
