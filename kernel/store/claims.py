"""How many tasks a worker claims from its group's queue: no more than it can start now.

An engine's queue hands a task to whoever reads its ``execute`` message
first, and resonate-pg's reader takes every message waiting (up to 100 a
page). A worker that took 1,000 messages with 4 threads would sit on 996
tasks the other workers of its group could be running; they would get them
only when each task's retry timer fires again. :class:`Claims` is the
worker's side of that bargain: the network asks :meth:`Claims.room` before
it reads, records what it took (:meth:`Claims.claimed`), and the worker says
when a task started and ended (:meth:`Claims.started`, :meth:`Claims.finished`),
which also wakes the reader to claim the next one at once. While the worker
stops (:meth:`Claims.close`) it has no room: it takes nothing new.

A claimed task that never starts here (another process acquired it first, or
its message named something this worker does not run) is forgotten after
``expire`` seconds, so it cannot hold a slot for ever. Everything runs on the
worker's event loop: no locks.
"""

from __future__ import annotations

from collections.abc import Callable

from kernel.core.clock import SYSTEM, Clock

#: Seconds a claimed task may take to start before its slot is given back.
CLAIM_EXPIRES = 10.0


class Claims:
    """The tasks a worker has claimed and not finished, against its ``capacity``."""

    def __init__(self, capacity: int, *, expire: float = CLAIM_EXPIRES, clock: Clock = SYSTEM) -> None:
        if capacity < 1:
            from kernel.core.errors import ConfigurationError

            raise ConfigurationError(f"concurrency {capacity!r}: a worker runs at least 1 task at a time")
        self.capacity = capacity
        self._expire = expire
        self._clock = clock
        #: task id -> monotonic time it was claimed (None once it started).
        self._held: dict[str, float | None] = {}
        self._closed = False
        #: Called when room frees up (the network sets it to wake its reader).
        self.on_room: Callable[[], None] = lambda: None

    def room(self) -> int:
        """How many more tasks may be claimed now (0 once closed)."""
        if self._closed:
            return 0
        now = self._clock.monotonic()
        for task_id, at in list(self._held.items()):
            if at is not None and now - at > self._expire:
                del self._held[task_id]
        return max(self.capacity - len(self._held), 0)

    def claimed(self, task_id: str) -> None:
        self._held.setdefault(task_id, self._clock.monotonic())

    def started(self, task_id: str) -> None:
        self._held[task_id] = None

    def finished(self, task_id: str) -> None:
        if self._held.pop(task_id, 0) != 0 and not self._closed:
            self.on_room()

    def close(self) -> None:
        """Claim nothing more (the worker is stopping)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> int:
        return sum(1 for at in self._held.values() if at is None)


__all__ = ["CLAIM_EXPIRES", "Claims"]
