"""One live kernel per session, across machines: a session-level advisory lock.

``pg_try_advisory_lock`` is held on the kernel's :class:`~kernel.store.postgres.link.PgLink`:
Postgres drops it when that connection ends, including when the kernel is killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket

import psycopg

from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import StoreLockedError
from kernel.core.ids import SESSION_TAG
from kernel.core.redaction import redact
from kernel.store.postgres.link import PgLink, unreachable

#: Seconds between attempts while waiting for a lock.
RETRY_INTERVAL = 0.05


def lock_key(session: str) -> int:
    """A signed 64-bit advisory-lock key for a session."""
    return int.from_bytes(hashlib.sha256(f"{SESSION_TAG}:{session}".encode()).digest()[:8], "big", signed=True)


def _owner() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


class PgSessionLock:
    """One live kernel per session, across machines: an advisory lock on ``link``."""

    def __init__(self, link: PgLink, session: str, *, clock: Clock = SYSTEM) -> None:
        self.link = link
        self.clock = clock
        self.session = session
        self.key = lock_key(session)
        self.held = False

    def acquire(self, wait: float = 0.0) -> PgSessionLock:
        conn = self.link.conn

        def take() -> bool:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
            return bool(row and row[0])

        try:
            if not self.clock.wait_for(take, wait, interval=RETRY_INTERVAL):
                holder = conn.execute("SELECT owner FROM pyrepl3.sessions WHERE session = %s", (self.session,)).fetchone()
                msg = (
                    f"session {self.session!r} is in use by a live kernel ({holder[0] if holder else 'another process'}); "
                    f"engine {redact(self.link.dsn)}. Stop that kernel or set PYREPL3_SESSION to another id."
                )
                raise StoreLockedError(msg)
            conn.execute(
                "INSERT INTO pyrepl3.sessions VALUES (%s, %s, %s) ON CONFLICT (session) DO UPDATE "
                "SET owner = excluded.owner, since = excluded.since",
                (self.session, _owner(), self.clock.now_ms()),
            )
        except psycopg.OperationalError as exc:
            raise unreachable(self.link.dsn, exc, self.link.setting) from None
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(psycopg.Error):
                self.link.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))


__all__ = ["PgSessionLock", "lock_key"]
