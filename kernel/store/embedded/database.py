"""The embedded store's SQLite file: its schema, how it is opened, how rows are encoded.

A promise row keeps the state machine's record minus what cannot outlive the
process (listener addresses); ``session``, ``state``, ``kind``, ``branch`` and
the times are columns so the catalog and the store's loader can query them
without decoding records. WAL mode lets the catalog read while a kernel writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
from resonate.connections.local import DurablePromise, Task

from kernel.core.errors import StoreCorruptError
from kernel.core.ids import kind_of

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS promises (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    state TEXT NOT NULL,
    kind TEXT NOT NULL,
    branch TEXT,
    created_at INTEGER NOT NULL,
    settled_at INTEGER,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS promises_by_session ON promises (session, kind, created_at);
CREATE INDEX IF NOT EXISTS promises_by_branch ON promises (branch);
CREATE INDEX IF NOT EXISTS promises_pending ON promises (session) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    state TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (session) WHERE state != 'fulfilled';
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    request TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_by_session ON inbox (session, seq);
"""


class _StoredPromise(msgspec.Struct, kw_only=True):
    """A promise as written to disk: the state machine's record minus the
    listener addresses, which name processes that will not outlive a restart."""

    id: str
    state: str
    param: Any
    value: Any
    tags: dict[str, str]
    timeout_at: int
    created_at: int
    settled_at: int | None
    awaiters: list[str] = []


class _StoredTask(msgspec.Struct, kw_only=True):
    id: str
    state: str
    version: int
    pid: str | None
    ttl: int | None
    resumes: list[str] = []


def connect(path: Path, *, readonly: bool = False, fsync: bool = False) -> sqlite3.Connection:
    """Open the store database, creating the schema when writable.

    A file that is not a SQLite database, or one whose schema is newer than this
    code, raises :class:`StoreCorruptError` naming the file; nothing is modified.
    """
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, timeout=10, check_same_thread=False
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL survives a crash of the process (kill -9); FULL also power loss.
            conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                msg = f"store {path} has schema version {row[0]}; this PyREPL3 reads up to {SCHEMA_VERSION}"
                raise StoreCorruptError(msg)
        else:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        msg = f"store database {path} is unreadable or corrupt ({exc}); it was left untouched"
        raise StoreCorruptError(msg) from exc
    return conn


def promise_row(session: str, p: DurablePromise) -> tuple[Any, ...]:
    stored = _StoredPromise(
        id=p.id,
        state=p.state,
        param=p.param,
        value=p.value,
        tags=p.tags,
        timeout_at=p.timeout_at,
        created_at=p.created_at,
        settled_at=p.settled_at,
        awaiters=sorted(p.awaiters),
    )
    return (
        p.id,
        session,
        p.state,
        kind_of(p.id),
        p.tags.get("resonate:branch"),
        p.created_at,
        p.settled_at,
        msgspec.json.encode(stored),
    )


def task_row(session: str, t: Task) -> tuple[Any, ...]:
    stored = _StoredTask(
        id=t.id, state=t.state, version=t.version, pid=t.pid, ttl=t.ttl, resumes=sorted(t.resumes)
    )
    return (t.id, session, t.state, msgspec.json.encode(stored))


def decode_promise(blob: bytes) -> DurablePromise:
    s = msgspec.json.decode(blob, type=_StoredPromise)
    return DurablePromise(
        id=s.id,
        state=s.state,  # type: ignore[arg-type]
        param=s.param,
        value=s.value,
        tags=s.tags,
        timeout_at=s.timeout_at,
        created_at=s.created_at,
        settled_at=s.settled_at,
        awaiters=set(s.awaiters),
        subscribers=set(),
    )


def decode_task(blob: bytes) -> Task:
    s = msgspec.json.decode(blob, type=_StoredTask)
    return Task(
        id=s.id,
        state=s.state,  # type: ignore[arg-type]
        version=s.version,
        pid=s.pid,
        ttl=s.ttl,
        resumes=set(s.resumes),
    )


def promise_sig(p: DurablePromise) -> tuple[Any, ...]:
    return (p.state, p.settled_at, p.timeout_at, frozenset(p.awaiters))


def task_sig(t: Task) -> tuple[Any, ...]:
    return (t.state, t.version, t.pid, t.ttl, frozenset(t.resumes))


__all__ = ["SCHEMA_VERSION", "connect", "decode_promise", "decode_task", "promise_row", "promise_sig", "task_row", "task_sig"]
