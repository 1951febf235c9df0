"""The failed attempts of a retrying step, kept as promises ``<step id>:attempt:<k>``.

A step given ``retries=`` or ``timeout=`` (``durable.run``) journals every
failed attempt before the next one starts: one promise created settled
(rejected) in one write, like a step, holding the failure
(:func:`kernel.durable.attempts.error_of` plus when it failed, the deadline and
when the next attempt is due), sealed with the session key and bound to its
promise id. A step without either never builds one of these (no cost on the
hot path); a resumed execution reads them back only for the step that was
running when the kernel died -- the first one not journaled -- verifying each
before its fields are believed, so an edited record cannot shorten a delay,
move a deadline or forge a count without being refused.
"""

from __future__ import annotations

from typing import Any, Protocol

from kernel.checkpoint.signing import Sealer
from kernel.core.clock import FAR_FUTURE, SYSTEM, Clock
from kernel.core.ids import KIND_TAG, attempt_id

#: The most attempts a resumed step reads back (a bound on the lookups, far above any sane policy).
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


__all__ = ["MAX_READ", "PromiseStore", "StepAttempts"]
