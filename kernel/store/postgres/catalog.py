"""The Postgres engine's read side (:class:`kernel.store.base.Catalog`).

Reads join PyREPL3's index (``pyrepl3.promises``) with resonate-pg's promise
table, so the role needs SELECT on ``resonate.promises`` (see README, "Scale out").
"""

from __future__ import annotations

from typing import Any

import psycopg

from kernel.core.clock import SYSTEM, Clock
from kernel.core.ids import kind_of
from kernel.core.models import ExecutionSummary, PromiseRecord, SessionSummary
from kernel.store.postgres.link import PgLink, unreachable
from kernel.store.records import bare_record, decode_value, listed_fields, matching, summary_row

#: The columns a catalog record is built from (``p`` = resonate.promises, ``i`` = the index).
RECORD_COLUMNS = (
    "p.id, i.session, p.state, p.param_data, p.value_data, p.tags, p.timeout_at, p.created_at, p.settled_at, p.is_timer"
)

#: What :meth:`PgCatalog.executions` reads: the param as JSON (decoded in the database), the value
#: only when the promise did not resolve (a rejected execution's error).
_JSON_OF = "convert_from(decode({}, 'base64'), 'UTF8')::json"
LISTED_COLUMNS = (
    f"p.id, i.session, p.state, {_JSON_OF.format('p.param_data')}, "
    f"CASE WHEN p.state <> 'resolved' THEN {_JSON_OF.format('p.value_data')} END, "
    "p.timeout_at, p.created_at, p.settled_at, p.is_timer"
)


def record(row: tuple[Any, ...], now_ms: int) -> PromiseRecord:
    """A catalog record from :data:`RECORD_COLUMNS`, as the database shows it at ``now_ms``."""
    pid, session, state, param, value, tags, timeout_at, created_at, settled_at, is_timer = row
    if state == "pending" and timeout_at <= now_ms:  # resonate-pg times promises out on read
        state, settled_at = ("resolved" if is_timer else "rejected_timedout"), timeout_at
    return {
        "id": pid,
        "kind": kind_of(pid),
        "state": state,
        "param": decode_value(param),
        "value": decode_value(value),
        "tags": tags or {},
        "timeout_at": timeout_at,
        "created_at": created_at,
        "settled_at": settled_at,
        "session": session,
    }


class PgCatalog:
    """Queries on the engine's :class:`PgLink` (which the engine owns and closes)."""

    def __init__(self, link: PgLink, *, clock: Clock = SYSTEM) -> None:
        self.link = link
        self.clock = clock

    def close(self) -> None:
        pass

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self.link.lock:
                return self.link.conn.execute(sql, args).fetchall()
        except psycopg.OperationalError as exc:
            raise unreachable(self.link.dsn, exc, self.link.setting) from None

    def sessions(self) -> list[SessionSummary]:
        rows = self._rows(
            "SELECT i.session, count(*), count(*) FILTER (WHERE p.state = 'pending'), min(i.created_at), max(i.created_at) "
            "FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id WHERE i.kind = 'exec' "
            "GROUP BY i.session ORDER BY max(i.created_at) DESC"
        )
        return [{"session": s, "executions": n, "pending": p, "first_at": a, "last_at": b} for s, n, p, a, b in rows]

    def executions(self, session: str | None = None, limit: int | None = None) -> list[ExecutionSummary]:
        """The param decoded by the database and the value only for an execution that did not
        resolve (its error's name): a resolved output, however large, stays in its TOAST pages."""
        where, args = matching("%s", **{"i.session": session})
        sql = (
            f"SELECT {LISTED_COLUMNS} FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            f"WHERE i.kind = 'exec'{where} ORDER BY i.created_at DESC, i.id DESC"
        )
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        now = self.clock.now_ms()
        out = []
        for pid, sess, state, param, value, timeout_at, created_at, settled_at, is_timer in self._rows(sql, tuple(args)):
            if state == "pending" and timeout_at <= now:  # as record() shows it
                state, settled_at = ("resolved" if is_timer else "rejected_timedout"), timeout_at
            out.append(summary_row(pid, sess, state, created_at, settled_at, listed_fields(param, value, state)))
        out.reverse()
        return out

    def count(self, session: str, kind: str = "exec") -> dict[str, int]:
        rows = self._rows(
            "SELECT p.state, count(*) FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            "WHERE i.session = %s AND i.kind = %s GROUP BY p.state",
            (session, kind),
        )
        return dict(rows)

    def promise(self, promise_id: str) -> PromiseRecord | None:
        rows = self._rows(
            f"SELECT {RECORD_COLUMNS} FROM resonate.promises p LEFT JOIN pyrepl3.promises i ON i.id = p.id WHERE p.id = %s",
            (promise_id,),
        )
        return record(rows[0], self.clock.now_ms()) if rows else None

    def checkpoints(self, session: str, limit: int | None = None) -> list[PromiseRecord]:
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            "WHERE i.session = %s AND i.kind = 'checkpoint' AND p.state = 'resolved' ORDER BY i.id DESC"
        )
        args: list[Any] = [session]
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        now = self.clock.now_ms()
        return [record(row, now) for row in reversed(self._rows(sql, tuple(args)))]

    def pending(self, session: str | None = None, kind: str | None = None) -> list[PromiseRecord]:
        now = self.clock.now_ms()
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM resonate.promises p JOIN pyrepl3.promises i ON i.id = p.id "
            "WHERE p.state = 'pending' AND p.timeout_at > %s"
        )
        where, filters = matching("%s", **{"i.session": session, "i.kind": kind})
        sql += where
        args: list[Any] = [now, *filters]
        return [record(row, now) for row in self._rows(sql + " ORDER BY p.created_at, p.id", tuple(args))]

    def of_kind(self, kind: str, session: str | None = None, *, values: bool = False) -> list[PromiseRecord]:
        """On the index's (kind, created_at) or (session, kind, created_at) order."""
        where, filters = matching("%s", **{"i.session": session})
        columns = RECORD_COLUMNS if values else "p.id, i.session, p.state, p.timeout_at, p.created_at, p.settled_at, p.is_timer"
        rows = self._rows(
            f"SELECT {columns} FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            f"WHERE i.kind = %s{where} ORDER BY i.created_at, i.id",
            (kind, *filters),
        )
        now = self.clock.now_ms()
        if values:
            return [record(row, now) for row in rows]
        out = []
        for pid, sess, state, timeout_at, created_at, settled_at, is_timer in rows:
            if state == "pending" and timeout_at <= now:  # as record() shows it
                state, settled_at = ("resolved" if is_timer else "rejected_timedout"), timeout_at
            out.append(bare_record(pid, sess, state, created_at, settled_at, timeout_at))
        return out


__all__ = ["RECORD_COLUMNS", "PgCatalog", "record"]
