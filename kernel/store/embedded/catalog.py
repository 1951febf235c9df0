"""Read-side queries over the embedded store, safe while a kernel is writing.

(The Postgres engine's read side is :class:`kernel.store.postgres.pg.PgCatalog`, same methods.)

Used by the CLI and the ``%durable`` magic. SQLite in WAL mode lets readers see
every committed write without blocking the kernel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from resonate.codec import Codec, NoopEncryptor
from resonate.types import PromiseRecord

from kernel.core.ids import kind_of
from kernel.core.models import CellError, ExecutionSummary
from kernel.store.embedded.store import connect, decode_promise

_codec = Codec(NoopEncryptor())


def decode_record(blob: bytes) -> dict[str, Any]:
    """A stored promise with its param and value decoded to plain data."""
    p = decode_promise(blob)
    raw = p.to_record()
    raw["param"] = raw.get("param") or {}
    raw["value"] = raw.get("value") or {}
    record = msgspec.convert(raw, PromiseRecord)
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
    }


def error_of(value: Any) -> CellError | None:
    """The structured error a rejected execution carries, if it is one of ours."""
    if isinstance(value, dict) and value.get("__type") == "error":
        try:
            return CellError.model_validate_json(value.get("message", ""))
        except ValueError:
            return None
    return None


def matching(placeholder: str, **columns: Any) -> tuple[str, list[Any]]:
    """`` AND col = ?`` for every column whose value is not None, and the values
    (``placeholder`` is ``?`` for SQLite, ``%s`` for psycopg). Every engine's
    read side filters its optional session/kind arguments with it."""
    given = {c: v for c, v in columns.items() if v is not None}
    return "".join(f" AND {c} = {placeholder}" for c in given), list(given.values())


class Catalog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = connect(self.path, readonly=True) if self.path.exists() else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def sessions(self) -> list[dict[str, Any]]:
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
            rec = decode_record(blob)
            rec["session"] = sess
            out.append(execution_summary(rec))
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

    def promise(self, promise_id: str) -> dict[str, Any] | None:
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT session, record FROM promises WHERE id = ?", (promise_id,)
        ).fetchone()
        if row is None:
            return None
        rec = decode_record(row[1])
        rec["session"] = row[0]
        return rec

    def checkpoints(self, session: str) -> list[dict[str, Any]]:
        """This session's resolved checkpoint records, oldest first."""
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT record FROM promises WHERE session = ? AND kind = 'checkpoint' AND state = 'resolved' ORDER BY id",
            (session,),
        ).fetchall()
        return [decode_record(blob) for (blob,) in rows]

    def pending(self, session: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        if self._db is None:
            return []
        where, args = matching("?", session=session, kind=kind)
        sql = "SELECT session, record FROM promises WHERE state = 'pending'" + where
        out = []
        for sess, blob in self._db.execute(sql + " ORDER BY created_at", args).fetchall():
            rec = decode_record(blob)
            rec["session"] = sess
            out.append(rec)
        return out


def execution_summary(rec: dict[str, Any]) -> ExecutionSummary:
    """One row of ``pyrepl3 executions`` from a decoded ``exec:`` record (any engine)."""
    param = _task_args(rec["param"])
    err = error_of(rec["value"]) if rec["state"] != "resolved" else None
    return ExecutionSummary(
        id=rec["id"],
        session=rec["session"],
        state=rec["state"],
        execution_count=param.get("execution_count"),
        code=param.get("code", ""),
        created_at=rec["created_at"],
        settled_at=rec["settled_at"],
        ename=err.ename if err else None,
    )


def _task_args(param: Any) -> dict[str, Any]:
    """The ExecutionParams dict inside an exec promise's TaskData param."""
    if isinstance(param, dict):
        args = param.get("args") or []
        if args and isinstance(args[0], dict):
            return args[0]
    return {}


__all__ = ["Catalog", "decode_record", "error_of", "execution_summary"]
