"""Where a SIGINT may land on the kernel's main thread, and what happens to it elsewhere.

ipykernel turns an interrupt into ``KeyboardInterrupt`` wherever the main
thread is while it handles a request. Only the cell's own code can take that
(IPython turns it into the cell's error). Anywhere else it loses the
execute_reply (ipykernel logs "KeyboardInterrupt caught in kernel" and sends
nothing) or leaves the durable protocol half done. So:

* **An execute_request** is held from the moment ipykernel would start
  delivering (:meth:`Interrupts.hold`, from the kernel's ``pre_handler_hook``)
  until its reply is sent (:meth:`Interrupts.release`, from
  ``post_handler_hook``, straight into the handler ipykernel keeps between
  requests). Only :meth:`Interrupts.delivered`, around the cell's code,
  delivers; an interrupt that came before the code ran stops it from running.
* **The end of a cell** (capture the namespace, store the checkpoint and the
  outcome): the cell is done, so an interrupt there cancels nothing the user
  wants cancelled. It is held and logged, never delivered
  (``deferred(redeliver=False)``).
* **A blocking wait on the runtime thread** (``concurrent.futures.Future.result``):
  an exception raised inside ``Condition.wait`` can leave the future's lock
  held, and the runtime thread then deadlocks completing that future. The
  wait (:meth:`Interrupts.wait`) holds the interrupt, stops waiting, and
  delivers it once the lock is out of reach, unless the span it is in holds
  interrupts for good.

Spans stack: an arrival counts in the innermost one, which decides. The handler
is swapped with :func:`signal.signal` on the main thread only (no other thread
receives signals in Python), each swap is one call (no instant without a
handler), and the previous handler is always put back; re-delivering is
:func:`signal.raise_signal`, so the interrupt reaches exactly the handler that
would have had it.
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

Handler = Any  # what signal.signal takes and returns


class Deferral:
    """One held span: how many interrupts arrived in it, and whether they end a wait inside it."""

    def __init__(self, redeliver: bool, what: str = "") -> None:
        self.redeliver = redeliver
        self.what = what
        self.arrived = 0

    @property
    def interrupted(self) -> bool:
        """An interrupt arrived that is to be delivered: a wait inside should stop."""
        return self.redeliver and self.arrived > 0


class Interrupts:
    """SIGINT handling for the kernel's main thread (one per process: :data:`MAIN`)."""

    def __init__(self, sig: int = signal.SIGINT) -> None:
        self.sig = sig
        self._spans: list[Deferral] = []
        self._previous: Handler = None

    @staticmethod
    def _on_main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    @property
    def holding(self) -> bool:
        """Whether the main thread is inside a held span (a wait on the durable engine, the
        end of a cell): an exception raised from a signal handler must not land there."""
        return bool(self._spans)

    @property
    def _current(self) -> Deferral | None:
        return self._spans[-1] if self._spans else None

    def _arrive(self, signum: int, frame: Any) -> None:
        if self._spans:
            self._spans[-1].arrived += 1

    # -- spans ---------------------------------------------------------------------

    def hold(self, *, redeliver: bool, what: str) -> Deferral:
        """Start holding interrupts (main thread); end with :meth:`release`. A span
        started inside another one is pushed on it (the handler stays)."""
        deferral = Deferral(redeliver, what)
        if not self._spans:
            self._previous = signal.signal(self.sig, self._arrive)
        self._spans.append(deferral)
        return deferral

    def release(self, deferral: Deferral, into: Handler = None) -> int:
        """End ``deferral`` (and any span left open inside it); the outermost one puts back ``into``
        (default: the handler it replaced). Returns how many interrupts it held."""
        if any(span is deferral for span in self._spans):  # with any span left open inside it
            del self._spans[next(i for i, span in enumerate(self._spans) if span is deferral):]
            if not self._spans:
                restored = self._previous if into is None else into
                signal.signal(self.sig, signal.default_int_handler if restored is None else restored)
        return deferral.arrived

    @contextmanager
    def deferred(self, *, redeliver: bool, what: str) -> Iterator[Deferral]:
        """Hold interrupts for the block; at its end deliver them (``redeliver``) or log them.

        Inside another span, a redelivering block (a wait) joins it, and a block
        that holds for good is pushed on it: its arrivals are logged, never delivered.
        """
        if not self._on_main_thread():
            yield Deferral(redeliver, what)
            return
        if self._spans and redeliver:
            yield self._spans[-1]
            return
        outermost = not self._spans
        deferral = self.hold(redeliver=redeliver, what=what)
        try:
            yield deferral
        finally:
            if self.release(deferral):
                if redeliver and outermost:
                    signal.raise_signal(self.sig)
                else:
                    log.info("an interrupt during %s was held: the cell had finished", what)

    @contextmanager
    def delivered(self) -> Iterator[None]:
        """Inside a held span: deliver interrupts during the block, as ipykernel
        would (``KeyboardInterrupt`` wherever the thread is), then hold again.

        An interrupt already held stops the block from starting
        (``KeyboardInterrupt`` here). One that lands as the block ends, outside
        the code it was meant for, still escapes as ``KeyboardInterrupt``: the
        caller answers it as an interrupted cell.
        """
        if not self._spans or not self._on_main_thread():
            yield
            return
        if self._spans[-1].arrived:
            self._spans[-1].arrived = 0
            raise KeyboardInterrupt("interrupted before the cell's code ran")
        spans, self._spans = self._spans, []
        signal.signal(self.sig, signal.default_int_handler)
        try:
            yield
        finally:
            self._spans = spans
            signal.signal(self.sig, self._arrive)

    # -- waits -----------------------------------------------------------------------

    def wait(self, fut: cf.Future[T], timeout: float | None = None) -> T:
        """``fut.result(timeout)``, never interrupted inside the future's lock.

        On the main thread an interrupt ends the wait (``KeyboardInterrupt`` from
        here, after the lock is released), unless the wait is inside a span
        that holds interrupts for good; ``fut`` itself is left to finish.
        """
        if not self._on_main_thread():
            return fut.result(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        nested = bool(self._spans)
        while True:  # an interrupt its handler does not raise for (SIG_IGN, say) does not end the wait
            with self.deferred(redeliver=True, what="a wait on the durable engine") as deferral:
                while not deferral.interrupted:
                    left = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))
                    try:
                        return fut.result(left)
                    except cf.TimeoutError:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise
            if nested:  # the enclosing span keeps the interrupt; this wait is over
                deferral.arrived = 0
                raise KeyboardInterrupt


#: The process's main-thread interrupts.
MAIN = Interrupts()

__all__ = ["MAIN", "POLL_SECONDS", "Deferral", "Interrupts"]
