"""One live kernel per session: an advisory ``flock`` on a file per session.

The lock is released by the OS when the process dies (including ``kill -9``),
so a crashed kernel never leaves a stale lock behind. The http engine uses the
same lock in its shared directory (which needs working POSIX locks).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import StoreLockedError, StoreUnavailableError
from kernel.core.ids import session_key
from kernel.store.modes import PRIVATE, Modes

#: Seconds between attempts while waiting for a lock.
RETRY_INTERVAL = 0.05


class FlockSessionLock:
    """Holds ``<home>/locks/<key>.lock`` for the lifetime of a kernel (a :class:`kernel.store.base.SessionLock`)."""

    def __init__(
        self, home: Path, session: str, *, clock: Clock = SYSTEM, setting: str = "PYREPL3_HOME", modes: Modes = PRIVATE
    ) -> None:
        """``setting`` names where ``home`` came from (for messages); ``modes`` how the lock files are created."""
        self.path = Path(home) / "locks" / f"{session_key(session)}.lock"
        self.session = session
        self.clock = clock
        self.setting = setting
        self.modes = modes
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> FlockSessionLock:
        """Take the lock, retrying for up to ``wait`` seconds (a restarted kernel
        may start while its predecessor is still exiting)."""
        try:
            self.modes.make_dirs(self.path.parent)
            self.modes.create_file(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.modes.file)
        except OSError as exc:
            msg = f"cannot take the session lock {self.path} ({self.setting}): {exc}"
            raise StoreUnavailableError(msg) from exc

        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not self.clock.wait_for(take, wait, interval=RETRY_INTERVAL):
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            msg = (
                f"session {self.session!r} is in use by a live kernel (pid {holder}); "
                f"lock file {self.path}. Stop that kernel or set PYREPL3_SESSION to another id."
            )
            raise StoreLockedError(msg)
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


__all__ = ["FlockSessionLock", "session_key"]
