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
kernel died (:class:`StepAttempts`, through the kernel's runtime), and a worker
that takes a task over after its first worker died (:class:`PromiseJournal`,
through the worker's own promise API on its loop); both go on with the next
attempt, the rest of its delay and the same deadline.
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
#: The most attempt records a journal reads back (a bound on the lookups, far above any sane policy).
MAX_READ = 10_000


class PromiseStore(Protocol):
    """What the journal needs of :class:`kernel.durable.runtime.DurableRuntime`."""

    def find(self, promise_id: str) -> Any: ...

    def create_settled(self, promise_id: str, timeout_at_ms: int, param: Any, tags: dict[str, str], state: str, value: Any) -> None: ...


class StepAttempts:
    """The :class:`~kernel.durable.attempts.AttemptJournal` of step ``pid``.

    ``lookup``: whether an earlier run may have journaled attempts (a resumed
    execution's first unfinished step); otherwise :meth:`failures` reads nothing."""

    def __init__(self, store: PromiseStore, sealer: Sealer, pid: str, *, what: str, lookup: bool, clock: Clock = SYSTEM) -> None:
        self._store = store
        self._sealer = sealer
        self.pid = pid
        self._what = what
        self._lookup = lookup
        self._clock = clock

    def failures(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        if not self._lookup:
            return found
        for k in range(1, MAX_READ + 1):
            aid = attempt_id(self.pid, k)
            record = self._store.find(aid)
            if record is None:
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
        for k in range(1, MAX_READ + 1):
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


__all__ = ["MAX_READ", "PromiseApi", "PromiseJournal", "PromiseStore", "StepAttempts"]
