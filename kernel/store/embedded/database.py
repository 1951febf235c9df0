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

from kernel.core.errors import StoreCorruptError, StoreError, StoreUnavailableError
from kernel.core.ids import kind_of
from kernel.store.modes import PRIVATE
from kernel.store.records import decode_value, listed_fields

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
-- What a listing shows of an exec promise: its columns again and records.listed_fields (JSON),
-- written with its row in the same transaction. Its own table, so a listing reads neither a
-- large record (a 50 MB output) nor its overflow pages; meta 'listed' says every exec row has one.
CREATE TABLE IF NOT EXISTS listed (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    settled_at INTEGER,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS listed_by_session ON listed (session, created_at);
CREATE INDEX IF NOT EXISTS listed_by_time ON listed (created_at);
-- Checkpoints a user pinned (%durable keep N), and a note of each checkpoint garbage collection
-- deleted (so %durable restore N can say it was reclaimed): beside the records, which are sealed.
CREATE TABLE IF NOT EXISTS pins (session TEXT NOT NULL, seq INTEGER NOT NULL, execution_count INTEGER, PRIMARY KEY (session, seq));
CREATE TABLE IF NOT EXISTS output_blobs (
    session TEXT NOT NULL, execution TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (execution, digest)
);
CREATE TABLE IF NOT EXISTS reclaimed (
    session TEXT NOT NULL, id TEXT NOT NULL, execution_count INTEGER, at REAL NOT NULL, PRIMARY KEY (session, id)
);
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


#: SQLite result codes (their primary part) that mean "this store cannot be written now" --
#: locked by another writer past the busy timeout, read-only, full, an I/O or
#: permission failure -- as opposed to "this file is not a store we can read".
UNWRITABLE = frozenset(
    {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"}
)
#: Bytes the write-ahead log is truncated to when checkpointed.
WAL_SIZE_LIMIT = 64 << 20
#: Milliseconds a write waits for another writer's lock before the store counts as unwritable.
BUSY_TIMEOUT_MS = 10_000


def _primary(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return next((code for code in UNWRITABLE if name == code or name.startswith(code + "_")), name)


def store_error(path: Path, setting: str, exc: sqlite3.Error, *, writing: bool = True) -> StoreError:
    """What a failed SQLite call on the store means, naming the file and the setting that chose it.

    Unwritable (locked, read-only, full, I/O): :class:`StoreUnavailableError`, which the kernel treats as
    a lost engine (durability off, reconnect later); anything else: :class:`StoreCorruptError`.
    """
    code = _primary(exc)
    if code in UNWRITABLE:
        why = {
            "SQLITE_BUSY": f"another process held its write lock for more than {BUSY_TIMEOUT_MS / 1000:g}s",
            "SQLITE_LOCKED": f"another process held its write lock for more than {BUSY_TIMEOUT_MS / 1000:g}s",
            "SQLITE_READONLY": "it is read-only (file permissions, an immutable file or a read-only mount)",
            "SQLITE_FULL": "its file system is full",
            "SQLITE_CANTOPEN": "the file or its directory cannot be opened (permissions?)",
            "SQLITE_PERM": "permission denied",
        }.get(code, "an I/O error")
        verb = "written" if writing else "read"
        return StoreUnavailableError(f"the store {path} ({setting}) cannot be {verb}: {why} ({exc})")
    return StoreCorruptError(f"store database {path} ({setting}) is unreadable or corrupt ({exc}); it was left untouched")


def connect(path: Path, *, readonly: bool = False, fsync: bool = False, setting: str = "PYREPL3_HOME") -> sqlite3.Connection:
    """Open the store database, creating it (owner-only) and its schema when writable.

    A file that is not a SQLite database, or one whose schema is newer than this
    code, raises :class:`StoreCorruptError` naming the file; nothing is modified.
    A writable open proves the file can be written (one tiny write), so a
    read-only or locked store is found at open, not in the middle of a cell:
    :class:`StoreUnavailableError`.
    """
    conn: sqlite3.Connection | None = None
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        else:
            try:
                PRIVATE.make_dirs(path.parent)
                PRIVATE.create_file(path)
            except OSError as exc:
                raise StoreUnavailableError(f"the store {path} ({setting}) cannot be created: {exc}") from exc
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL survives a crash of the process (kill -9); FULL also power loss.
            conn.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
            # After a checkpoint of the WAL (SQLite's automatic one every 1000 pages, or garbage
            # collection's), a WAL grown by a large record is cut back to this, not kept at its peak.
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                msg = f"store {path} ({setting}) has schema version {row[0]}; this PyREPL3 reads up to {SCHEMA_VERSION}"
                raise StoreCorruptError(msg)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(row[0]) if row else str(SCHEMA_VERSION),))
            _fill_listed(conn)
            PRIVATE.tighten(path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")))
        else:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        raise store_error(path, setting, exc, writing=not readonly) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


def checkpoint_and_close(conn: sqlite3.Connection) -> None:
    """Fold the WAL into the database file and close: what is left is one self-contained file."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass  # another reader is mid-transaction, or the disk is full: the WAL stays and is still valid
    finally:
        conn.close()


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


#: Upserts a ``listed`` row, keeping its rowid (the listing's order among equal times, as the promises').
LISTED_SQL = (
    "INSERT INTO listed VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
    "state=excluded.state, settled_at=excluded.settled_at, fields=excluded.fields"
)


def listed_row(session: str, p: DurablePromise) -> tuple[Any, ...] | None:
    """The ``listed`` row of an ``exec:`` promise (None for other kinds): its param decoded,
    its value only when not resolved (the error's name), so a resolved output is never read."""
    if kind_of(p.id) != "exec":
        return None
    value = decode_value(_data(p.value)) if p.state != "resolved" else None
    fields = listed_fields(decode_value(_data(p.param)), value, p.state)
    return p.id, session, p.state, p.created_at, p.settled_at, msgspec.json.encode(fields).decode()


def _fill_listed(conn: sqlite3.Connection) -> None:
    """Give every ``exec:`` row written before the ``listed`` table its row (once per file,
    decoding those records), then mark the file so readers trust the table alone."""
    if conn.execute("SELECT 1 FROM meta WHERE key = 'listed'").fetchone() is not None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM meta WHERE key = 'listed'").fetchone() is not None:
            conn.execute("COMMIT")  # another writer filled it meanwhile
            return
        old = conn.execute(
            "SELECT session, record FROM promises WHERE kind = 'exec' AND id NOT IN (SELECT id FROM listed) ORDER BY rowid"
        ).fetchall()
        rows = [listed_row(session, decode_promise(blob)) for session, blob in old]
        conn.executemany(LISTED_SQL, rows)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('listed', '1')")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _data(wire: Any) -> str | None:
    return wire.get("data") if isinstance(wire, dict) else None


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


__all__ = ["SCHEMA_VERSION", "UNWRITABLE", "checkpoint_and_close", "connect", "store_error", "decode_promise", "decode_task", "LISTED_SQL", "listed_row", "promise_row", "promise_sig", "task_row", "task_sig"]
