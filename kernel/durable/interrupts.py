"""Where a SIGINT must not land on the kernel's main thread, and what happens to it instead.

ipykernel turns an interrupt into ``KeyboardInterrupt`` wherever the main
thread happens to be. Two places in the cell protocol cannot take that:

* **The end of a cell** (capture the namespace, store the checkpoint and the
  outcome): the cell is done, so an interrupt there cancels nothing the user
  wants cancelled, yet escaping it would lose the execute_reply and leave the
  execution half stored. It is held and logged, never delivered
  (``deferred(redeliver=False)``).
* **A blocking wait on the runtime thread** (``concurrent.futures.Future.result``):
  an exception raised inside ``Condition.wait`` can leave the future's lock
  held, and the runtime thread then deadlocks completing that future. The
  wait (:meth:`Interrupts.wait`) holds the interrupt, stops waiting, and
  delivers it again once the lock is out of reach -- the cell is still running,
  so the user's interrupt still interrupts it.

The handler is swapped with :func:`signal.signal` on the main thread only (no
other thread receives signals in Python) and the previous one is always put
back; re-delivering is :func:`signal.raise_signal`, so the interrupt reaches
exactly the handler that would have had it.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds between two looks, in a held wait, at whether an interrupt arrived
#: (the wait itself returns as soon as its future is done).
POLL_SECONDS = 0.05


class Deferral:
    """One held span: how many interrupts arrived, and whether they are delivered at its end."""

    def __init__(self, redeliver: bool) -> None:
        self.redeliver = redeliver
        self.arrived = 0

    def hold(self, signum: int, frame: Any) -> None:
        self.arrived += 1

    @property
    def interrupted(self) -> bool:
        """An interrupt arrived that is to be delivered: a wait inside should stop."""
        return self.redeliver and self.arrived > 0


class Interrupts:
    """SIGINT handling for the kernel's main thread (one per process: :data:`MAIN`).

    Spans nest: an inner span joins the outer one, so an interrupt inside a wait
    inside the end of a cell is held for the end of the cell, which never delivers it.
    """

    def __init__(self, sig: int = signal.SIGINT) -> None:
        self.sig = sig
        self._current: Deferral | None = None

    @staticmethod
    def _on_main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    @contextmanager
    def deferred(self, *, redeliver: bool, what: str) -> Iterator[Deferral]:
        """Hold interrupts for the block; at its end deliver them (``redeliver``) or log them."""
        if self._current is not None or not self._on_main_thread():
            yield self._current or Deferral(redeliver)
            return
        deferral = Deferral(redeliver)
        previous = signal.signal(self.sig, deferral.hold)
        self._current = deferral
        try:
            yield deferral
        finally:
            self._current = None
            signal.signal(self.sig, signal.default_int_handler if previous is None else previous)
            if deferral.arrived:
                if redeliver:
                    signal.raise_signal(self.sig)
                else:
                    log.info("an interrupt during %s was held: the cell had finished", what)

    def wait(self, fut: cf.Future[T], timeout: float | None = None) -> T:
        """``fut.result(timeout)``, never interrupted inside the future's lock.

        On the main thread an interrupt ends the wait (``KeyboardInterrupt`` from
        here, after the lock is released), unless the wait is inside a span
        that holds interrupts for good; ``fut`` itself is left to finish.
        """
        if not self._on_main_thread():
            return fut.result(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        nested = self._current is not None
        while True:  # an interrupt its handler does not raise for (SIG_IGN, say) does not end the wait
            with self.deferred(redeliver=True, what="a wait on the durable engine") as deferral:
                while not deferral.interrupted:
                    left = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))
                    try:
                        return fut.result(left)
                    except cf.TimeoutError:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise
            if nested:  # the enclosing span delivers it at its end; this wait is over
                raise KeyboardInterrupt

#: The process's main-thread interrupts.
MAIN = Interrupts()

__all__ = ["MAIN", "POLL_SECONDS", "Deferral", "Interrupts"]
