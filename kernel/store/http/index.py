"""The http engine's promise index: which promises belong to which session.

A Resonate server has no search by session, so each PyREPL3 ``promise.create``
is indexed first (see :mod:`kernel.store.http.network`) in the place
``PYREPL3_BLOBS`` names: ``index.sqlite3`` in a shared directory, or the
``pyrepl3.promises`` table of a Postgres database. A settled promise never
changes again, so its terminal state is remembered here and it is not fetched
again to answer "what is pending".
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

import psycopg

from kernel.store.modes import Modes
from kernel.store.postgres.link import PgLink, unreachable
from kernel.store.records import matching

#: A row: (id, session, kind, created_at, terminal state or None).
IndexRow = tuple[str, str, str, int, str | None]


class PromiseIndex(Protocol):
    def add(self, pid: str, session: str, kind: str, created_at: int) -> None: ...

    def rows(self, session: str | None = None, kind: str | None = None, *, open_only: bool = False) -> list[IndexRow]: ...

    def session_of(self, pid: str) -> str | None: ...

    def settled(self, pid: str, state: str) -> None: ...

    def close(self) -> None: ...


class SqliteIndex:
    """The promise index in ``<shared dir>/index.sqlite3`` (created by :meth:`open`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> SqliteIndex:
        modes = Modes.like(self.path.parent)  # owner-only, or group-shared (kernel/store/modes.py)
        modes.make_dirs(self.path.parent)
        modes.create_file(self.path)
        db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 10000")
        db.executescript(
            "CREATE TABLE IF NOT EXISTS promises (id TEXT PRIMARY KEY, session TEXT NOT NULL, kind TEXT NOT NULL, "
            "created_at INTEGER NOT NULL, state TEXT);"
            "CREATE INDEX IF NOT EXISTS promises_by_session ON promises (session, kind, created_at);"
        )
        self._conn = db
        return self

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "SqliteIndex used before open()"
        return self._conn

    def add(self, pid: str, session: str, kind: str, created_at: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO promises VALUES (?, ?, ?, ?, NULL)", (pid, session, kind, created_at))

    def rows(self, session: str | None = None, kind: str | None = None, *, open_only: bool = False) -> list[IndexRow]:
        where, args = matching("?", session=session, kind=kind)
        sql = "SELECT id, session, kind, created_at, state FROM promises WHERE 1=1" + where
        if open_only:
            sql += " AND state IS NULL"
        with self._lock:
            return self._db.execute(sql + " ORDER BY created_at, id", args).fetchall()

    def session_of(self, pid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT session FROM promises WHERE id = ?", (pid,)).fetchone()
        return row[0] if row else None

    def settled(self, pid: str, state: str) -> None:
        with self._lock:
            self._db.execute("UPDATE promises SET state = ? WHERE id = ?", (state, pid))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()


class PgIndex:
    """The promise index in the ``pyrepl3`` schema of the ``PYREPL3_BLOBS`` database."""

    def __init__(self, link: PgLink) -> None:
        self.link = link

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        try:
            with self.link.lock:
                return self.link.conn.execute(sql, args)
        except psycopg.OperationalError as exc:
            raise unreachable(self.link.dsn, exc, self.link.setting) from None

    def add(self, pid: str, session: str, kind: str, created_at: int) -> None:
        self._run(
            "INSERT INTO pyrepl3.promises (id, session, kind, created_at) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (pid, session, kind, created_at),
        )

    def rows(self, session: str | None = None, kind: str | None = None, *, open_only: bool = False) -> list[IndexRow]:
        where, args = matching("%s", session=session, kind=kind)
        sql = "SELECT id, session, kind, created_at, state FROM pyrepl3.promises WHERE true" + where
        if open_only:
            sql += " AND state IS NULL"
        return self._run(sql + " ORDER BY created_at, id", tuple(args)).fetchall()

    def session_of(self, pid: str) -> str | None:
        row = self._run("SELECT session FROM pyrepl3.promises WHERE id = %s", (pid,)).fetchone()
        return row[0] if row else None

    def settled(self, pid: str, state: str) -> None:
        self._run("UPDATE pyrepl3.promises SET state = %s WHERE id = %s", (state, pid))

    def close(self) -> None:
        pass


__all__ = ["IndexRow", "PgIndex", "PromiseIndex", "SqliteIndex"]
