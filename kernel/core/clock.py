"""Time as PyREPL3 uses it: one clock seam, one wall-clock-to-milliseconds rule, one wait.

Promises carry wall-clock milliseconds (``timeout_at_ms``, ``created_on``);
everything else waits on a monotonic deadline. Code that waits takes a
:class:`Clock` (and so a sleeper) as a constructor parameter, so a test can
drive it without patching :mod:`time`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol, TypeVar

T = TypeVar("T")

#: A promise that should never time out on its own still needs a deadline: a year.
FAR_FUTURE = timedelta(days=365)


class Sleeper(Protocol):
    def __call__(self, seconds: float, /) -> None: ...


def to_ms(seconds: float) -> int:
    """Wall-clock seconds (``time.time()``) as the integer milliseconds promises use."""
    return int(seconds * 1000)


@dataclass(frozen=True)
class Clock:
    """Wall time, monotonic time and sleeping, replaceable as one."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Sleeper = field(default=time.sleep)

    def now_ms(self) -> int:
        return to_ms(self.wall())

    def ms_after(self, delay: timedelta | float) -> int:
        """The wall-clock millisecond ``delay`` (seconds or a timedelta) from now."""
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        return to_ms(self.wall() + seconds)

    def wait_for(self, probe: Callable[[], T], timeout: float, *, interval: float = 0.02) -> T | None:
        """Call ``probe`` until it returns something truthy or ``timeout`` seconds pass.

        Returns the truthy value, or None on timeout. ``probe`` runs at least once,
        so a zero timeout is a single try.
        """
        deadline = self.monotonic() + timeout
        while True:
            value = probe()
            if value:
                return value
            left = deadline - self.monotonic()
            if left <= 0:
                return None
            self.sleep(min(interval, left))


#: The real clock, for production call sites that are not handed one.
SYSTEM = Clock()
