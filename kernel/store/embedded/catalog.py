"""The embedded engine's read side (:class:`kernel.store.base.Catalog`), safe while a kernel is writing.

Used by the CLI and the ``%durable`` magic. SQLite in WAL mode lets readers see
every committed write without blocking the kernel.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
from resonate.codec import Codec, NoopEncryptor
from resonate.types import PromiseRecord as WireRecord

from kernel.core.errors import StoreCorruptError
from kernel.core.ids import checkpoint_prefix, kind_of, session_key
from kernel.core.models import ExecutionSummary, PromiseRecord, SessionSummary
from kernel.store.embedded.database import connect, decode_promise, store_error
from kernel.store.records import bare_record, execution_summary, matching, summary_row

_codec = Codec(NoopEncryptor())


def decode_record(blob: bytes, session: str | None) -> PromiseRecord:
    """A stored promise (of ``session``) with its param and value decoded to plain data."""
    p = decode_promise(blob)
    raw = p.to_record()
    raw["param"] = raw.get("param") or {}
    raw["value"] = raw.get("value") or {}
    record = msgspec.convert(raw, WireRecord)
    record = _codec.decode_promise(record)
    return {
        "id": record.id,
        "kind": kind_of(record.id),
        "state": record.state,
        "param": record.param.data,
        "value": record.value.data,
        "tags": record.tags,
        "timeout_at": record.timeout_at,
        "created_at": record.created_at,
        "settled_at": record.settled_at,
        "session": session,
    }


class _Reader:
    """``execute(...).fetchall()/fetchone()`` on the store, a failure raised as :func:`store_error` (naming the file)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, setting: str) -> None:
        self._conn, self._path, self._setting = conn, path, setting

    @contextlib.contextmanager
    def _translated(self):  # type: ignore[no-untyped-def]
        try:
            yield
        except sqlite3.Error as exc:
            raise store_error(self._path, self._setting, exc, writing=False) from exc

    def execute(self, sql: str, args: Any = ()) -> _Reader._Rows:
        with self._translated():
            return _Reader._Rows(self, self._conn.execute(sql, args))

    class _Rows:
        def __init__(self, reader: _Reader, cursor: sqlite3.Cursor) -> None:
            self._reader, self._cursor = reader, cursor

        def fetchall(self) -> list[Any]:
            with self._reader._translated():
                return self._cursor.fetchall()

        def fetchone(self) -> Any:
            with self._reader._translated():
                return self._cursor.fetchone()


class EmbeddedCatalog:
    """Queries over ``path``; a store file that does not exist yet reads as empty."""

    def __init__(self, path: Path, *, setting: str = "PYREPL3_HOME") -> None:
        self.path = Path(path)
        self.setting = setting
        self._db_conn: sqlite3.Connection | None = None
        self._closed = False

    def open(self) -> EmbeddedCatalog:
        if self._db_conn is None and self.path.exists():
            self._db_conn = connect(self.path, readonly=True, setting=self.setting)
        return self

    @property
    def is_open(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._closed = True
        db, self._db_conn = self._db_conn, None
        if db is not None:
            db.close()

    @property
    def _db(self) -> _Reader | None:
        """The connection, its SQLite errors as PyREPL3's: a malformed page is "unreadable or corrupt", not a traceback."""
        return None if self._db_conn is None else _Reader(self._db_conn, self.path, self.setting)

    def _decode(self, blob: bytes, session: str | None) -> PromiseRecord:
        """:func:`decode_record`; a record that does not decode means a damaged file (SQLite checks pages, not records)."""
        try:
            return decode_record(blob, session)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder trips on, the file is damaged
            msg = f"store database {self.path} ({self.setting}) is unreadable or corrupt (a record does not decode: {exc})"
            raise StoreCorruptError(msg) from exc

    def sessions(self) -> list[SessionSummary]:
        if self._db is None:
            return []
        source = "listed" if self._is_listed() else "promises WHERE kind = 'exec'"
        rows = self._db.execute(
            "SELECT session, count(*), sum(state = 'pending'), min(created_at), max(created_at) "
            f"FROM {source} GROUP BY session ORDER BY max(created_at) DESC"
        ).fetchall()
        return [
            {"session": s, "executions": n, "pending": p or 0, "first_at": a, "last_at": b}
            for s, n, p, a, b in rows
        ]

    def executions(self, session: str | None = None, limit: int | None = None) -> list[ExecutionSummary]:
        """From the ``listed`` table, never the records (which hold the outputs); a file no
        kernel of this version has opened yet (no ``listed`` mark) is listed from its records."""
        if self._db is None:
            return []
        listed = self._is_listed()
        where, args = matching("?", session=session)
        columns = "id, session, state, created_at, settled_at, fields" if listed else "id, session, record"
        sql = f"SELECT {columns} FROM {'listed' if listed else 'promises'} WHERE 1 = 1"
        sql += where if listed else " AND kind = 'exec'" + where
        sql += " ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._db.execute(sql, args).fetchall()
        if listed:
            out = [summary_row(pid, s, state, at, settled, msgspec.json.decode(fields)) for pid, s, state, at, settled, fields in rows]
        else:
            out = [execution_summary(self._decode(blob, s)) for _pid, s, blob in rows]
        out.reverse()
        return out

    def _is_listed(self) -> bool:
        """Whether every ``exec:`` row of the file has its ``listed`` row (see ``database._fill_listed``)."""
        assert self._db is not None
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
        return "listed" in tables and self._db.execute("SELECT 1 FROM meta WHERE key = 'listed'").fetchone() is not None

    def count(self, session: str, kind: str = "exec") -> dict[str, int]:
        if self._db is None:
            return {}
        if kind == "exec" and self._is_listed():
            sql, args = "SELECT state, count(*) FROM listed WHERE session = ? GROUP BY state", (session,)
        else:
            sql, args = "SELECT state, count(*) FROM promises WHERE session = ? AND kind = ? GROUP BY state", (session, kind)
        rows = self._db.execute(sql, args).fetchall()
        return dict(rows)

    def promise(self, promise_id: str) -> PromiseRecord | None:
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT session, record FROM promises WHERE id = ?", (promise_id,)
        ).fetchone()
        if row is None:
            return None
        return self._decode(row[1], row[0])

    def checkpoints(self, session: str, limit: int | None = None) -> list[PromiseRecord]:
        """This session's resolved checkpoint records, oldest first (the newest ``limit``)."""
        if self._db is None:
            return []
        # The primary key's range of this session's checkpoint ids, newest first: reads ``limit``
        # rows, not all of the session's (``+`` keeps SQLite off the by-session index, which sorts all).
        prefix = checkpoint_prefix(session_key(session))
        sql = (
            "SELECT record FROM promises WHERE id > ? AND id < ? AND +session = ? AND +kind = 'checkpoint'"
            " AND state = 'resolved' ORDER BY id DESC"
        )
        args: list[Any] = [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), session]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._db.execute(sql, args).fetchall()
        return [self._decode(blob, session) for (blob,) in reversed(rows)]

    def pending(self, session: str | None = None, kind: str | None = None) -> list[PromiseRecord]:
        if self._db is None:
            return []
        where, args = matching("?", session=session, kind=kind)
        sql = "SELECT session, record FROM promises WHERE state = 'pending'" + where
        return [self._decode(blob, sess) for sess, blob in self._db.execute(sql + " ORDER BY created_at", args).fetchall()]

    def of_kind(self, kind: str, session: str | None = None, *, values: bool = False) -> list[PromiseRecord]:
        """On the by-session index, one session at a time (``IN``: the index has no kind-first order)."""
        if self._db is None:
            return []
        within, args = ("= ?", [session]) if session is not None else ("IN (SELECT DISTINCT session FROM promises)", [])
        columns = "id, session, state, created_at, settled_at" + (", record" if values else "")
        rows = self._db.execute(
            f"SELECT {columns} FROM promises WHERE session {within} AND kind = ? ORDER BY created_at, rowid", [*args, kind]
        ).fetchall()
        if values:
            return [self._decode(row[5], row[1]) for row in rows]
        return [bare_record(*row) for row in rows]


__all__ = ["EmbeddedCatalog", "decode_record"]
