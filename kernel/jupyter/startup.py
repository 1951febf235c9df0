"""What a kernel does at start beyond ipykernel's own, done in the background.

Opening the durable session (importing the durable layer, the engine, the
Resonate runtime; taking the session's lock) costs about half of ipykernel's
own start, and reading back a large namespace as long as its size says (half
a gigabyte of arrays: seconds). A kernel that did either before answering
kernel_info would leave frontends at "starting" meanwhile, and jupyter_client
would send kernel_info again after 1 s. So both run on a thread of their own,
started once the first kernel_info is answered (so that they do not compete
with the start for the interpreter), or by the first request that needs them;
kernel_info, comm_info and history are answered at once, and each request
that uses the session or the namespace (execute, complete, inspect) first
awaits :meth:`BackgroundStart.wait`. The values still go straight into the
real user namespace, which nothing else touches until then.
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


class BackgroundStart(Generic[T]):
    """``work`` (opens the session and restores: returns what was restored, or
    None) on a background thread; ``finish(result)`` once, on the thread of the
    first request that waits."""

    def __init__(self, work: Callable[[], T | None], finish: Callable[[T | None], None]) -> None:
        self._work = work
        self._finish = finish
        self._done: cf.Future[T | None] | None = None
        self._thread: threading.Thread | None = None
        self._finished = False

    def start(self) -> None:
        """Begin (the first call does; later ones do nothing)."""
        if self._done is not None:
            return
        self._done = cf.Future()
        self._thread = threading.Thread(target=self._run, args=(self._done,), name="pyrepl3-start", daemon=True)
        self._thread.start()

    def _run(self, done: cf.Future[T | None]) -> None:
        try:
            result = self._work()
        except BaseException:  # noqa: BLE001 - the restore reports its own failures; never lose the waiters
            log.exception("opening the session or restoring the namespace at start failed")
            result = None
        done.set_result(result)

    async def wait(self) -> None:
        """Return once the session is open and the namespace back (at once after
        the first time). Never started (a kernel driven without :meth:`start`): begin now."""
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
        """Let the work end before the store it uses is closed."""
        if self._thread is not None:
            self._thread.join(timeout)
