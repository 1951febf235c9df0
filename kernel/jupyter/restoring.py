"""The namespace a kernel gets back at start, restored in the background.

Reading back a large namespace takes as long as its size says (half a
gigabyte of arrays: seconds). A kernel that did it before answering
kernel_info would leave frontends at "starting" meanwhile, and jupyter_client
would send kernel_info again after 1 s. So the restore runs on a thread of its
own, started once the first kernel_info is answered (so that it does not
compete with the start for the interpreter), or by the first request that
needs the namespace; kernel_info, comm_info and history are answered at once,
and each request that uses the namespace (execute, complete, inspect) first
awaits :meth:`RestoreAtStart.wait`. The values still go straight into
the real user namespace, which nothing else touches until then.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class RestoreAtStart(Generic[T]):
    """``restore`` (returns what was restored, or None) on a background thread;
    ``finish(result)`` once, on the thread of the first request that waits."""

    def __init__(self, restore: Callable[[], T | None], finish: Callable[[T | None], None]) -> None:
        self._restore = restore
        self._finish = finish
        self._done: cf.Future[T | None] | None = None
        self._thread: threading.Thread | None = None
        self._finished = False

    def start(self) -> None:
        """Begin restoring (the first call does; later ones do nothing)."""
        if self._done is not None:
            return
        self._done = cf.Future()
        self._thread = threading.Thread(target=self._run, args=(self._done,), name="pyrepl3-restore", daemon=True)
        self._thread.start()

    def _run(self, done: cf.Future[T | None]) -> None:
        try:
            result = self._restore()
        except BaseException:  # noqa: BLE001 - the restore reports its own failures; never lose the waiters
            log.exception("restoring the namespace at start failed")
            result = None
        done.set_result(result)

    async def wait(self) -> None:
        """Return once the namespace is back (at once after the first time).
        Never started (a kernel driven without :meth:`start`): restore now, here."""
        if self._finished:
            return
        if self._done is None:
            self.start()
        assert self._done is not None
        result = await asyncio.wrap_future(self._done)
        if not self._finished:
            self._finished = True
            self._finish(result)

    def join(self, timeout: float) -> None:
        """Let a running restore end before the store it reads from is closed."""
        if self._thread is not None:
            self._thread.join(timeout)
