"""The attempts of a remote call, journaled as promises ``<rpc id>:attempt:<k>``.

A worker runs a call that retries under :class:`~kernel.durable.attempts.Attempts`;
every failed attempt is kept, before the next one starts, as a rejected
promise ``attempt_id(pid, k)`` whose value is the failure (the error, when it
failed, the deadline, when the next attempt is due) sealed for that promise
(:class:`~kernel.checkpoint.signing.Sealer`: a record another key wrote, or one
moved to another id, does not verify). A worker that takes a task over after
its first worker died reads these records first, and goes on with the next
attempt, the rest of its delay and the same deadline.

The journal is called from the worker thread that runs the attempts; it puts
its reads and writes on the worker's event loop (``on_loop``) and waits.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from resonate.error import ServerError
from resonate.types import PromiseRecord, Value

from kernel.checkpoint.signing import Sealer
from kernel.core.clock import FAR_FUTURE, SYSTEM, Clock
from kernel.core.ids import KIND_TAG, SESSION_TAG, attempt_id

T = TypeVar("T")
#: How many attempt records a call may have before the journal stops reading (a guard, not a policy).
MAX_RECORDS = 10_000


class PromiseApi(Protocol):
    """The part of ``Resonate.promises`` the journal uses."""

    async def get(self, id: str) -> PromiseRecord: ...

    async def create(self, id: str, timeout_at: int, param: Value, tags: dict[str, str]) -> PromiseRecord: ...

    async def reject(self, id: str, value: Value) -> PromiseRecord: ...


class PromiseJournal:
    """:class:`~kernel.durable.attempts.AttemptJournal` of one call ``promise_id``."""

    def __init__(
        self,
        promises: PromiseApi,
        sealer: Sealer,
        promise_id: str,
        *,
        on_loop: Callable[[Coroutine[Any, Any, Any]], Any],
        clock: Clock = SYSTEM,
    ) -> None:
        self._promises = promises
        self._sealer = sealer
        self.promise_id = promise_id
        self._on_loop = on_loop
        self._clock = clock

    def failures(self) -> list[dict[str, Any]]:
        """The journaled failures, verified, in order (stops at the first missing record)."""
        out: list[dict[str, Any]] = []
        for k in range(1, MAX_RECORDS + 1):
            record = self._on_loop(self._find(attempt_id(self.promise_id, k)))
            if record is None or record.state == "pending":
                break
            out.append(self._sealer.unseal(record.id, record.value.data, f"attempt {k} of {self.promise_id}"))
        return out

    def record_failure(self, attempt: int, failure: dict[str, Any]) -> None:
        aid = attempt_id(self.promise_id, attempt)
        self._on_loop(self._record(aid, self._sealer.seal(aid, failure)))

    async def _find(self, pid: str) -> PromiseRecord | None:
        try:
            return await self._promises.get(pid)
        except ServerError as exc:
            if exc.code == 404:
                return None
            raise

    async def _record(self, pid: str, sealed: dict[str, Any]) -> None:
        tags = {SESSION_TAG: self._sealer.session, KIND_TAG: "attempt"}
        await self._promises.create(pid, self._clock.ms_after(FAR_FUTURE), Value(data=None), tags)
        await self._promises.reject(pid, Value(data=sealed))


__all__ = ["PromiseApi", "PromiseJournal"]
