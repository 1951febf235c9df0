"""One live kernel per session: an advisory ``flock`` on a file per session.

The lock is released by the OS when the process dies (including ``kill -9``),
so a crashed kernel never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from kernel.core.errors import StoreLockedError
from kernel.core.ids import session_key


class SessionLock:
    """Holds ``<home>/locks/<key>.lock`` for the lifetime of a kernel."""

    def __init__(self, home: Path, session: str) -> None:
        self.path = Path(home) / "locks" / f"{session_key(session)}.lock"
        self.session = session
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> SessionLock:
        """Take the lock, retrying for up to ``wait`` seconds (a restarted kernel
        may start while its predecessor is still exiting)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                msg = (
                    f"session {self.session!r} is in use by a live kernel (pid {holder}); "
                    f"lock file {self.path}. Stop that kernel or set PYREPL3_SESSION to another id."
                )
                raise StoreLockedError(msg) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def try_acquire(self) -> bool:
        try:
            self.acquire()
        except StoreLockedError:
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
