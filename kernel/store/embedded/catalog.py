"""The embedded engine's read side (:class:`kernel.store.base.Catalog`), safe while a kernel is writing.

Used by the CLI and the ``%durable`` magic. SQLite in WAL mode lets readers see
every committed write without blocking the kernel.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
from resonate.codec import Codec, NoopEncryptor
from resonate.types import PromiseRecord as WireRecord

from kernel.core.ids import kind_of
from kernel.core.models import ExecutionSummary, PromiseRecord, SessionSummary
from kernel.store.embedded.database import connect, decode_promise
from kernel.store.records import execution_summary, matching

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


class EmbeddedCatalog:
    """Queries over ``path``; a store file that does not exist yet reads as empty."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> EmbeddedCatalog:
        if self._db is None and self.path.exists():
            self._db = connect(self.path, readonly=True)
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def sessions(self) -> list[SessionSummary]:
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT session, count(*), sum(state = 'pending'), min(created_at), max(created_at) "
            "FROM promises WHERE kind = 'exec' GROUP BY session ORDER BY max(created_at) DESC"
        ).fetchall()
        return [
            {"session": s, "executions": n, "pending": p or 0, "first_at": a, "last_at": b}
            for s, n, p, a, b in rows
        ]

    def executions(self, session: str | None = None, limit: int | None = None) -> list[ExecutionSummary]:
        if self._db is None:
            return []
        where, args = matching("?", session=session)
        sql = "SELECT session, record FROM promises WHERE kind = 'exec'" + where + " ORDER BY created_at DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        out = []
        for sess, blob in self._db.execute(sql, args).fetchall():
            out.append(execution_summary(decode_record(blob, sess)))
        out.reverse()
        return out

    def count(self, session: str, kind: str = "exec") -> dict[str, int]:
        if self._db is None:
            return {}
        rows = self._db.execute(
            "SELECT state, count(*) FROM promises WHERE session = ? AND kind = ? GROUP BY state",
            (session, kind),
        ).fetchall()
        return dict(rows)

    def promise(self, promise_id: str) -> PromiseRecord | None:
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT session, record FROM promises WHERE id = ?", (promise_id,)
        ).fetchone()
        if row is None:
            return None
        return decode_record(row[1], row[0])

    def checkpoints(self, session: str) -> list[PromiseRecord]:
        """This session's resolved checkpoint records, oldest first."""
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT record FROM promises WHERE session = ? AND kind = 'checkpoint' AND state = 'resolved' ORDER BY id",
            (session,),
        ).fetchall()
        return [decode_record(blob, session) for (blob,) in rows]

    def pending(self, session: str | None = None, kind: str | None = None) -> list[PromiseRecord]:
        if self._db is None:
            return []
        where, args = matching("?", session=session, kind=kind)
        sql = "SELECT session, record FROM promises WHERE state = 'pending'" + where
        return [decode_record(blob, sess) for sess, blob in self._db.execute(sql + " ORDER BY created_at", args).fetchall()]


__all__ = ["EmbeddedCatalog", "decode_record"]
