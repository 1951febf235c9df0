"""One remote call on a worker: verify it, run it (with its retries), settle it.

The engine delivers a task of the group to ``pyrepl3_call(ctx, sealed_call)``
with ``ctx.info.id`` the call's promise (``exec:<msg_id>:rpc:<n>``). Before
anything in the call is imported or unpickled, :func:`~kernel.durable.calls.open_call`
checks its seal against the worker's key, for that promise id: a call that is
unsigned, signed with another key, moved from another promise or malformed
is **refused** -- the promise is rejected with ``refused by worker <name>: why``,
an error is logged, and nothing is retried (the SDK's retry policy is
``Never``; a refusal is an outcome, not a failure).

A verified call runs in the worker's thread pool, never on the SDK's event
loop: the loop keeps the task's lease alive (heartbeats) however long the
function takes. Its attempts follow the call's retry policy
(:class:`~kernel.durable.attempts.Attempts`) with a journal of attempt promises
(:mod:`kernel.durable.attempt_journal`), so a worker that takes the task over
after this one died goes on counting. The outcome is sealed for the promise
(:func:`~kernel.durable.calls.seal_result` / :func:`~kernel.durable.calls.seal_failure`)
and the SDK settles the promise with it through the task, once: a second
worker finishing the same task later (at-least-once runs) is refused by the
engine, because the task it held is no longer its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from resonate.context import Context

from kernel.checkpoint.signing import Sealer, Signer
from kernel.core import tracing
from kernel.core.clock import SYSTEM, Clock
from kernel.core.retries import max_attempts
from kernel.durable.attempt_journal import AttemptRecords, LoopPromises, PromiseApi
from kernel.durable.attempts import AttemptJournal, Attempts, NoJournal, error_of
from kernel.durable.calls import RemoteCall, open_call, seal_failure, seal_result
from kernel.store.claims import Claims

log = logging.getLogger(__name__)

#: Seconds a journal read or write from a call's thread may wait for the engine.
JOURNAL_TIMEOUT = 30.0


class Refused(Exception):
    """The message of a refused call's rejected promise: ``refused by worker <name>: why``."""


class Reporter(Protocol):
    """What a worker tells its operator (``pyrepl3 worker`` prints it, one line each)."""

    def started(self, promise_id: str, function: str, attempt: int) -> None: ...

    def finished(self, promise_id: str, function: str, attempts: int, seconds: float) -> None: ...

    def failed(self, promise_id: str, function: str, attempts: int, seconds: float, error: str) -> None: ...

    def refused(self, promise_id: str, why: str) -> None: ...


class LogReporter:
    """A :class:`Reporter` that only logs."""

    def started(self, promise_id: str, function: str, attempt: int) -> None:
        log.info("start %s %s attempt %d", promise_id, function, attempt)

    def finished(self, promise_id: str, function: str, attempts: int, seconds: float) -> None:
        log.info("done %s %s after %d attempt(s) in %.3f s", promise_id, function, attempts, seconds)

    def failed(self, promise_id: str, function: str, attempts: int, seconds: float, error: str) -> None:
        log.info("failed %s %s after %d attempt(s) in %.3f s: %s", promise_id, function, attempts, seconds, error)

    def refused(self, promise_id: str, why: str) -> None:
        log.info("refused %s: %s", promise_id, why)


class CallRunner:
    """Runs the remote calls a worker is given (the SDK's dependency for ``pyrepl3_call``)."""

    def __init__(
        self,
        signer: Signer,
        *,
        name: str,
        pool: cf.Executor,
        claims: Claims,
        reporter: Reporter | None = None,
        group: str = "",
        clock: Clock = SYSTEM,
    ) -> None:
        self.signer = signer
        self.name = name
        self.group = group
        self.pool = pool
        self.claims = claims
        self.reporter: Reporter = reporter or LogReporter()
        self._clock = clock
        #: The promises (``Resonate.promises``) the journal writes to; set when the worker starts.
        self.promises: PromiseApi | None = None
        #: Called with a promise id to give its task back at once (the worker is stopping).
        self.give_back: Callable[[str], Coroutine[Any, Any, None]] | None = None
        #: Promise id -> the call running for it here.
        self.running: dict[str, asyncio.Future[Any]] = {}
        self.finished = 0

    async def run(self, promise_id: str, sealed_call: Any, *, timeout_at_ms: int | None = None) -> dict[str, Any]:
        """The sealed result of the call stored in ``promise_id`` (which times out at
        ``timeout_at_ms``), or the exception that rejects it (sealed failure, refusal)."""
        self.claims.started(promise_id)
        try:
            if self.claims.closed and self.give_back is not None:
                # Delivered while stopping (a pushing engine cannot be held back): not ours to start.
                await self.give_back(promise_id)
                raise asyncio.CancelledError(f"{promise_id}: given back, the worker is stopping")
            try:
                call = open_call(self.signer, promise_id, sealed_call)
            except Exception as exc:  # noqa: BLE001 - anything that does not open is refused, never run
                why = f"{type(exc).__name__}: {exc}"
                log.error("refused %s: %s", promise_id, why)
                self.reporter.refused(promise_id, why)
                raise Refused(f"refused by worker {self.name}: {why}") from None
            return await self._run(call, timeout_at_ms)
        finally:
            self.running.pop(promise_id, None)
            self.claims.finished(promise_id)

    async def _run(self, call: RemoteCall, timeout_at_ms: int | None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        pid = call.promise_id
        sealer = Sealer(self.signer, call.session)
        assert self.promises is not None, "the worker has not started"
        # A call that does not retry journals nothing, so there is nothing to read back either.
        journal: AttemptJournal = (
            NoJournal()
            if max_attempts(call.retries) == 1
            else AttemptRecords(LoopPromises(self.promises, call.session, on_loop=self._on_loop(loop)), sealer, pid, what=pid, clock=self._clock)
        )
        attempts = Attempts(call.retries, what=f"{call.function} ({pid})", timeout=call.timeout, clock=self._clock, preempt=False)
        started_at = self._clock.wall()
        t0 = time.perf_counter()
        if call.sent_at is not None:
            tracing.record_rpc_queue(started_at - call.sent_at, self.group)

        def attempt() -> Any:
            self.reporter.started(pid, call.function, attempts.attempts)
            # Each attempt a span in the thread that runs it, a child of the cell's pyrepl3.rpc.
            with tracing.continued(call.trace), tracing.span(
                tracing.RPC_RUN, promise_id=pid, group=self.group, function=call.function, attempt=attempts.attempts, worker=self.name
            ):
                return call.fn(*call.args, **call.kwargs)

        future = loop.run_in_executor(self.pool, attempts.run, attempt, journal)
        self.running[pid] = future
        left = None if timeout_at_ms is None else max(timeout_at_ms / 1000 - self._clock.wall(), 0.0)
        try:
            try:
                value = await asyncio.wait_for(asyncio.shield(future), left)
            except TimeoutError:
                # The engine times the promise out at its deadline; the attempt's thread cannot be
                # stopped and runs on, but its result can no longer settle anything.
                log.warning("%s (%s) is still running at its promise's deadline; its result will be dropped", pid, call.function)
                raise TimeoutError(f"{call.function}: its promise {pid} timed out while the attempt ran") from None
            # A result that cannot be sent back (not picklable) fails the call like an error would.
            sealed = seal_result(sealer, pid, value, started_at=started_at, attempts=attempts.attempts, worker=self.name)
        except Exception as exc:  # noqa: BLE001 - the function's own failure (every attempt), sealed for the cell
            seconds = time.perf_counter() - t0
            error = error_of(exc)
            error["traceback"] = _own_traceback(exc, attempt.__code__) or error["traceback"]
            self.finished += 1
            self.reporter.failed(pid, call.function, attempts.attempts, seconds, f"{error['ename']}: {error['evalue']}")
            raise seal_failure(sealer, pid, error, started_at=started_at, attempts=attempts.attempts, worker=self.name) from None
        seconds = time.perf_counter() - t0
        self.finished += 1
        self.reporter.finished(pid, call.function, attempts.attempts, seconds)
        return sealed

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop) -> Callable[[Coroutine[Any, Any, Any]], Any]:
        def call(coro: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(JOURNAL_TIMEOUT)

        return call


def _own_traceback(exc: BaseException, attempt: Any) -> list[str]:
    """The traceback from the called function down (the worker's own frames left out), notes included."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is not attempt:
        tb = tb.tb_next
    if tb is None or tb.tb_next is None:
        return []
    return traceback.format_exception(type(exc), exc, tb.tb_next)[-20:]


async def pyrepl3_call(ctx: Context, sealed_call: Any) -> dict[str, Any]:
    """The function every worker registers as :data:`~kernel.core.ids.REMOTE_CALL_FUNC`."""
    return await ctx.get_dependency(CallRunner).run(ctx.info.id, sealed_call, timeout_at_ms=ctx.info.timeout_at)


__all__ = ["CallRunner", "LogReporter", "Refused", "Reporter", "pyrepl3_call"]
