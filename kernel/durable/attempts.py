"""Attempts of a call that retries: backoff, a deadline, and a journal of failures.

A step (``durable.run``) or a remote call (``durable.rpc``) given ``retries=``
runs again when it raises, after the delay its policy
(:mod:`kernel.core.retries`) gives for that attempt, until it returns, the
policy stops, or its ``timeout`` passes. Every failed attempt is journaled
before the next one starts (:class:`AttemptJournal`: a settled promise
``<id>:attempt:<k>`` holding the error and when the next attempt is due), so a
kernel or worker that dies between attempts is followed by one that goes on
with the next attempt, the rest of its delay and the same deadline -- it does
not start the count again. The error that ends the call is the last
attempt's own exception, with a note naming the attempt count. The last
failure is journaled too (one record per failed attempt), so a process that
dies before it reports the end finds the call exhausted instead of running it
once more.

A deadline is enforced between attempts everywhere; on the main thread (a
cell's ``durable.run``) an attempt still running when it passes is also
stopped, by ``SIGALRM`` raising :class:`TimeoutError` in it, unless the cell
armed a timer of its own (then it is left alone). The timer is armed only
around the attempt and its handler put back after it; SIGINT is never touched,
so an interrupt still stops the attempt or the delay before the next one
(``KeyboardInterrupt`` is not an attempt's failure: nothing runs after it). An
expiry that finds the thread inside a wait on the durable engine (the attempt
calling ``durable.checkpoint``, say: see :mod:`kernel.core.interrupts`) is put
off until the wait is over.
"""

from __future__ import annotations

import builtins
import contextlib
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from resonate.retry import RetryPolicy

from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import ConfigurationError
from kernel.core.interrupts import MAIN, POLL_SECONDS, Interrupts
from kernel.core.retries import describe, policy_json

T = TypeVar("T")


class AttemptJournal(Protocol):
    """Where the failed attempts of one call are kept (promises ``<id>:attempt:<k>``)."""

    def failures(self) -> list[dict[str, Any]]:
        """The failures journaled so far, in order (empty for a call never run before)."""
        ...

    def record_failure(self, attempt: int, failure: dict[str, Any]) -> None:
        """Journal failure ``attempt`` (1 = the first run) before the next attempt starts."""
        ...


class NoJournal:
    """The journal of a call that does not retry: nothing to keep."""

    def failures(self) -> list[dict[str, Any]]:
        return []

    def record_failure(self, attempt: int, failure: dict[str, Any]) -> None:
        return None


class AttemptsExhausted(Exception):
    """The journal shows every attempt failed already (the process died before it could
    report the last one), or the deadline passed meanwhile: raised with the last error's
    text and the count when its type is not a built-in exception (one that is is raised again)."""


def error_of(exc: BaseException) -> dict[str, Any]:
    """An exception as the JSON a failure record holds."""
    return {
        "ename": type(exc).__name__,
        "evalue": str(exc),
        "traceback": traceback.format_exception(exc)[-20:],
    }


def _builtin_error(ename: str, evalue: str) -> Exception | None:
    """The journaled last error again, when its type is a built-in exception that takes a
    message (``ConnectionError``, ``TimeoutError``...): a cell that catches it by type still
    does after a resume. Nothing but :mod:`builtins` is looked up."""
    cls = getattr(builtins, ename, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    try:
        return cls(evalue)
    except Exception:  # noqa: BLE001 - a built-in that wants other arguments (UnicodeDecodeError)
        return None


class Attempts:
    """Runs one call under ``policy`` until it returns or may not run again.

    ``timeout`` (seconds, or None) bounds the whole call, retries and delays
    included, from its first attempt (a journaled deadline wins on a resume)."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        what: str,
        timeout: float | None = None,
        clock: Clock = SYSTEM,
        preempt: bool = True,
        interrupts: Interrupts = MAIN,
    ) -> None:
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf")
        ):
            raise ConfigurationError(f"timeout={timeout!r}: it must be a number of seconds > 0")
        self.policy = policy
        self.what = what
        self.timeout = timeout
        self._clock = clock
        self._preempt = preempt
        self._interrupts = interrupts
        #: How many times the call ran, this process and earlier ones together.
        self.attempts = 0

    def run(self, call: Callable[[], T], journal: AttemptJournal) -> T:
        failures = journal.failures()
        self.attempts = len(failures)
        deadline = self._deadline(failures)
        last: BaseException | None = None
        while True:
            attempt = self.attempts + 1
            if attempt > 1:
                delay = self.policy.next(attempt - 1)
                if delay is None:
                    raise self._final(last, failures)
                due = failures[-1].get("retry_at") if failures and last is None else None
                wait = (due - self._clock.wall()) if isinstance(due, (int, float)) else float(delay)
                if deadline is not None and self._clock.wall() + max(wait, 0.0) >= deadline:
                    raise self._final(last, failures, timed_out=True)
                if wait > 0:
                    self._clock.sleep(wait)
            self.attempts = attempt
            try:
                with self._bounded(deadline):
                    return call()
            except Exception as exc:  # noqa: BLE001 - the call's own error, journaled and maybe retried
                last = exc
                failure = {
                    **error_of(exc),
                    "at": self._clock.wall(),
                    "deadline": deadline,
                    "policy": policy_json(self.policy),
                }
                nxt = self.policy.next(attempt)
                if nxt is not None:
                    failure["retry_at"] = self._clock.wall() + nxt
                journal.record_failure(attempt, failure)
                failures.append(failure)
                if nxt is None:
                    raise self._final(exc, failures) from None

    def _deadline(self, failures: list[dict[str, Any]]) -> float | None:
        for failure in failures:
            if isinstance(failure.get("deadline"), (int, float)):
                return float(failure["deadline"])
        return None if self.timeout is None else self._clock.wall() + self.timeout

    def _final(self, last: BaseException | None, failures: list[dict[str, Any]], *, timed_out: bool = False) -> BaseException:
        count = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        why = f"its timeout of {self.timeout:g} s passed" if timed_out and self.timeout else describe(self.policy)
        note = f"{self.what} failed after {count} ({why})"
        if last is None:
            # Every attempt ran (and failed) in a process that died before it could report.
            record = failures[-1] if failures else {}
            ename, evalue = str(record.get("ename", "Error")), str(record.get("evalue", ""))
            again = _builtin_error(ename, evalue)
            if again is None:
                return AttemptsExhausted(f"{note}: {ename}: {evalue}")
            again.add_note(f"{note}; the last one ran in an earlier process")
            return again
        if self.attempts > 1 or timed_out:
            last.add_note(note)
        return last

    @contextlib.contextmanager
    def _bounded(self, deadline: float | None) -> Iterator[None]:
        """Stop an attempt on the main thread when the deadline passes (SIGALRM)."""
        if (
            deadline is None
            or not self._preempt
            or threading.current_thread() is not threading.main_thread()
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0
        ):
            yield
            return
        left = deadline - self._clock.wall()
        if left <= 0:
            raise TimeoutError(f"{self.what}: its timeout of {self.timeout:g} s passed")
        what, timeout, interrupts = self.what, self.timeout, self._interrupts

        def expire(signum: int, frame: Any) -> None:
            if interrupts.holding:  # raising inside a wait on the runtime could leave its lock held
                signal.setitimer(signal.ITIMER_REAL, POLL_SECONDS)
                return
            raise TimeoutError(f"{what}: its timeout of {timeout:g} s passed during the attempt")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, left)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


__all__ = ["AttemptJournal", "Attempts", "AttemptsExhausted", "NoJournal", "error_of"]
