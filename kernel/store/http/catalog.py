"""The http engine's read side (:class:`kernel.store.base.Catalog`): the index says
which promises, the server (``promise.get``) says what they are."""

from __future__ import annotations

from kernel.core.models import ExecutionSummary, PromiseRecord, SessionSummary
from kernel.store.http.index import IndexRow, PromiseIndex
from kernel.store.http.server import Server, record
from kernel.store.records import TERMINAL, execution_summary


class RemoteCatalog:
    def __init__(self, index: PromiseIndex, server: Server) -> None:
        self.index = index
        self.server = server

    def close(self) -> None:
        pass

    def _records(self, rows: list[IndexRow]) -> list[PromiseRecord]:
        out = []
        for pid, session, _kind, _created, _state in rows:
            p = self.server.promise(pid)
            if p is None:
                continue  # indexed, but its create never reached the server
            if p["state"] in TERMINAL and _state is None:
                self.index.settled(pid, p["state"])
            out.append(record(p, session))
        return out

    def sessions(self) -> list[SessionSummary]:
        by_session: dict[str, SessionSummary] = {}
        for pid, session, _kind, created, state in self.index.rows(kind="exec"):
            s = by_session.setdefault(session, {"session": session, "executions": 0, "pending": 0, "first_at": created, "last_at": created})
            s["executions"] += 1
            s["last_at"] = max(s["last_at"], created)
            if state is None:
                p = self.server.promise(pid)
                if p is not None and p["state"] == "pending":
                    s["pending"] += 1
                elif p is not None:
                    self.index.settled(pid, p["state"])
        return sorted(by_session.values(), key=lambda s: s["last_at"], reverse=True)

    def executions(self, session: str | None = None, limit: int | None = None) -> list[ExecutionSummary]:
        rows = self.index.rows(session, "exec")
        if limit is not None:
            rows = rows[-limit:]
        return [execution_summary(r) for r in self._records(rows)]

    def count(self, session: str, kind: str = "exec") -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self._records(self.index.rows(session, kind)):
            counts[rec["state"]] = counts.get(rec["state"], 0) + 1
        return counts

    def promise(self, promise_id: str) -> PromiseRecord | None:
        p = self.server.promise(promise_id)
        return None if p is None else record(p, self.index.session_of(promise_id))

    def checkpoints(self, session: str, limit: int | None = None) -> list[PromiseRecord]:
        rows = sorted(self.index.rows(session, "checkpoint"), key=lambda row: row[0])
        if limit is None:
            return [r for r in self._records(rows) if r["state"] == "resolved"]
        newest: list[PromiseRecord] = []  # fetched newest first, one request each: only the ``limit`` wanted
        for row in reversed(rows):
            if len(newest) >= limit:
                break
            newest.extend(r for r in self._records([row]) if r["state"] == "resolved")
        return newest[::-1]

    def pending(self, session: str | None = None, kind: str | None = None) -> list[PromiseRecord]:
        recs = self._records(self.index.rows(session, kind, open_only=True))
        return [r for r in recs if r["state"] == "pending"]

    def of_kind(self, kind: str, session: str | None = None, *, values: bool = False) -> list[PromiseRecord]:
        """One ``promise.get`` per promise (the server holds the states and times), values or not."""
        return sorted(self._records(self.index.rows(session, kind)), key=lambda r: (r["created_at"], r["id"]))


__all__ = ["RemoteCatalog"]
