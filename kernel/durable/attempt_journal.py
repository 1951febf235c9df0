"""The failed attempts of a call that retries, kept as promises ``<id>:attempt:<k>``.

A step given ``retries=`` or ``timeout=`` (``durable.run``) and a remote call a
worker runs under :class:`~kernel.durable.attempts.Attempts` journal every
failed attempt before the next one starts: a promise settled rejected, holding
the failure (:func:`kernel.durable.attempts.error_of` plus when it failed, the
deadline and when the next attempt is due), sealed with the session key and
bound to its promise id. A record another key wrote, or one moved to another
id, does not verify, so an edited record cannot shorten a delay, move a
deadline or forge a count. A call without retries never builds a journal (no
cost on the hot path).

Who reads them back: a resumed execution, for the step that was running when the
kernel died (through the kernel's runtime), and a worker that takes a task over
after its first worker died (through the worker's own promise API on its loop,
:class:`LoopPromises`); one :class:`AttemptRecords` over either store, and both
go on with the next attempt, the rest of its delay and the same deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from resonate.error import ServerError
from resonate.types import PromiseRecord, Value

from kernel.checkpoint.signing import Sealer
from kernel.core.clock import FAR_FUTURE, SYSTEM, Clock
from kernel.core.ids import KIND_TAG, SESSION_TAG, attempt_id

#: The most attempt records a journal reads back (a bound on the lookups, far above any sane policy).
MAX_READ = 10_000


class PromiseStore(Protocol):
    """Where a journal's records go: :class:`kernel.durable.runtime.DurableRuntime` in a kernel,
    :class:`LoopPromises` (a worker's promise API, on its loop) in a worker."""

    def find(self, promise_id: str) -> Any: ...

    def create_settled(self, promise_id: str, timeout_at_ms: int, param: Any, tags: dict[str, str], state: str, value: Any) -> None: ...


class AttemptRecords:
    """The :class:`~kernel.durable.attempts.AttemptJournal` of call ``pid`` (a step or a remote call).

    ``lookup``: whether an earlier run may have journaled attempts (a resumed
    execution's first unfinished step; always, for a worker taking a task over);
    otherwise :meth:`failures` reads nothing."""

    def __init__(self, store: PromiseStore, sealer: Sealer, pid: str, *, what: str, lookup: bool = True, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._sealer = sealer
        self.pid = pid
        self._what = what
        self._lookup = lookup
        self._clock = clock

    def failures(self) -> list[dict[str, Any]]:
        """The journaled failures, verified, in order (stops at the first missing record)."""
        found: list[dict[str, Any]] = []
        if not self._lookup:
            return found
        for k in range(1, MAX_READ + 1):
            aid = attempt_id(self.pid, k)
            record = self._store.find(aid)
            if record is None or record.state == "pending":
                break
            found.append(self._sealer.unseal(aid, record.value.data, f"the journal of attempt {k} of {self._what}"))
        return found

    def record_failure(self, attempt: int, failure: dict[str, Any]) -> None:
        aid = attempt_id(self.pid, attempt)
        self._store.create_settled(
            aid, self._clock.ms_after(FAR_FUTURE), {"kind": "attempt", "of": self.pid, "attempt": attempt},
            {KIND_TAG: "attempt"}, "rejected", self._sealer.seal(aid, failure),
        )


class PromiseApi(Protocol):
    """The part of ``Resonate.promises`` :class:`LoopPromises` uses."""

    async def get(self, id: str) -> PromiseRecord: ...

    async def create(self, id: str, timeout_at: int, param: Value, tags: dict[str, str]) -> PromiseRecord: ...

    async def resolve(self, id: str, value: Value) -> PromiseRecord: ...

    async def reject(self, id: str, value: Value) -> PromiseRecord: ...


class LoopPromises:
    """A worker's :class:`PromiseStore`: its promise API, each request run on its loop by
    ``on_loop`` (the call runs in a pool thread); records tagged with ``session``."""

    def __init__(self, promises: PromiseApi, session: str, *, on_loop: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._promises = promises
        self._session = session
        self._on_loop = on_loop

    def find(self, promise_id: str) -> PromiseRecord | None:
        return self._on_loop(self._find(promise_id))

    def create_settled(self, promise_id: str, timeout_at_ms: int, param: Any, tags: dict[str, str], state: str, value: Any) -> None:
        self._on_loop(self._create_settled(promise_id, timeout_at_ms, param, tags, state, value))

    async def _find(self, promise_id: str) -> PromiseRecord | None:
        try:
            return await self._promises.get(promise_id)
        except ServerError as exc:
            if exc.code == 404:
                return None
            raise

    async def _create_settled(self, promise_id: str, timeout_at_ms: int, param: Any, tags: dict[str, str], state: str, value: Any) -> None:
        settle = {"resolved": self._promises.resolve, "rejected": self._promises.reject}[state]
        await self._promises.create(promise_id, timeout_at_ms, Value(data=param), {**tags, SESSION_TAG: self._session})
        await settle(promise_id, Value(data=value))


__all__ = ["MAX_READ", "AttemptRecords", "LoopPromises", "PromiseApi", "PromiseStore"]
