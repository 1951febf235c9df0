"""The http engine: a Resonate server reached through the SDK's HTTP and SSE connections.

The server keeps promises and tasks; what it does not offer is kept at
``PYREPL3_BLOBS``, a place every machine can reach:

* a Postgres DSN: the ``pyrepl3`` schema there holds the blobs (chunked, as
  with the Postgres engine), the promise index and the session lock
  (an advisory lock);
* a shared directory: ``blobs/`` (the file blob store), ``index.sqlite3``
  and ``locks/`` (``flock``; needs a file system with working POSIX locks).

The index lists the ids of a session's promises (written before each
``promise.create`` is sent, so no promise escapes it); records are read from
the server with ``promise.get``. A settled promise never changes again, so
its terminal state is remembered in the index and it is not fetched again to
answer "what is pending".
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
from resonate.codec import Codec, NoopEncryptor
from resonate.connections import HttpConnection, SSEConnection
from resonate.types import Value
from resonate_base.connections import Network, Source
from resonate_base.error import ConnectorError

from kernel.core.settings import BlobsSpec, EngineSpec, redact, scrub
from kernel.core.errors import ConfigurationError, EngineConnectionError, PyRepl3Error
from kernel.core.ids import kind_of
from kernel.store.embedded.catalog import matching
from kernel.core.models import ExecutionSummary
from kernel.store.engines import Engine, Lock
from kernel.core.ids import session_key
from kernel.store.postgres.pg import DEFAULT_TIMEOUT, _index_entry, one_line

log = logging.getLogger(__name__)
_codec = Codec(NoopEncryptor())
TERMINAL = ("resolved", "rejected", "rejected_canceled", "rejected_timedout")


# -- talking to the server from synchronous code ------------------------------------------


class Server:
    """``POST /`` of a Resonate server with the protocol envelope, from any thread."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def rpc(self, kind: str, data: dict[str, Any]) -> tuple[int, Any]:
        envelope = {"kind": kind, "head": {"corrId": f"pyrepl3-{uuid.uuid4().hex}", "version": "1"}, "data": data}
        request = urllib.request.Request(
            self.url + "/", data=msgspec.json.encode(envelope), headers={"Content-Type": "application/json"}, method="POST"
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 - the configured server
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except (OSError, urllib.error.URLError) as exc:
            raise EngineConnectionError(
                f"the Resonate server at {redact(self.url)} is unreachable: {scrub(one_line(exc), self.url)}"
            ) from None
        try:
            response = msgspec.json.decode(body)
            return int(response["head"]["status"]), response.get("data")
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            raise EngineConnectionError(f"{redact(self.url)} did not answer as a Resonate server") from None

    def promise(self, promise_id: str) -> dict[str, Any] | None:
        status, data = self.rpc("promise.get", {"id": promise_id})
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise PyRepl3Error(f"the Resonate server answered {status} to promise.get {promise_id}")
        return data.get("promise")


def record(p: dict[str, Any], session: str | None) -> dict[str, Any]:
    """A catalog record (as :func:`kernel.store.embedded.catalog.decode_record` gives) from the wire shape."""

    def decode(v: Any) -> Any:
        data = (v or {}).get("data") if isinstance(v, dict) else None
        return _codec.decode(Value(headers=None, data=data)) if data else None

    return {
        "id": p["id"],
        "kind": kind_of(p["id"]),
        "state": p["state"],
        "param": decode(p.get("param")),
        "value": decode(p.get("value")),
        "tags": p.get("tags") or {},
        "timeout_at": p.get("timeoutAt"),
        "created_at": p.get("createdAt"),
        "settled_at": p.get("settledAt"),
        "session": session,
    }


# -- the index ------------------------------------------------------------------------------


class SqliteIndex:
    """The promise index in ``<shared dir>/index.sqlite3``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._db.executescript(
            "CREATE TABLE IF NOT EXISTS promises (id TEXT PRIMARY KEY, session TEXT NOT NULL, kind TEXT NOT NULL, "
            "created_at INTEGER NOT NULL, state TEXT);"
            "CREATE INDEX IF NOT EXISTS promises_by_session ON promises (session, kind, created_at);"
        )
        self._lock = threading.Lock()

    def add(self, pid: str, session: str, kind: str, created_at: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO promises VALUES (?, ?, ?, ?, NULL)", (pid, session, kind, created_at))

    def rows(self, session: str | None = None, kind: str | None = None, *, open_only: bool = False) -> list[tuple[Any, ...]]:
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
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


class PgIndex:
    """The promise index in the ``pyrepl3`` schema of the ``PYREPL3_BLOBS`` database."""

    def __init__(self, link: Any) -> None:
        self.link = link

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        import psycopg

        from kernel.store.postgres.pg import unreachable

        try:
            with self.link.lock:
                return self.link.conn.execute(sql, args)
        except psycopg.OperationalError as exc:
            raise unreachable(self.link.dsn, exc) from None

    def add(self, pid: str, session: str, kind: str, created_at: int) -> None:
        self._run(
            "INSERT INTO pyrepl3.promises (id, session, kind, created_at) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (pid, session, kind, created_at),
        )

    def rows(self, session: str | None = None, kind: str | None = None, *, open_only: bool = False) -> list[tuple[Any, ...]]:
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


class IndexingNetwork:
    """The SDK's ``HttpConnection``, writing each PyREPL3 promise into the index
    before its ``promise.create`` is sent (an index row whose promise never got
    created is skipped by readers; a promise without a row could be lost)."""

    def __init__(self, inner: HttpConnection, index: Any, url: str) -> None:
        self.inner = inner
        self.index = index
        self.url = url

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        entry = _index_entry(req)
        if entry is not None:
            try:
                self.index.add(entry["id"], entry["session"], entry["kind"], int(time.time() * 1000))
            except PyRepl3Error as exc:
                raise ConnectorError(exc) from None
        try:
            return await self.inner.send(req, headers)
        except ConnectorError as exc:
            raise ConnectorError(
                EngineConnectionError(f"the Resonate server at {redact(self.url)} is unreachable: {scrub(one_line(exc.error), self.url)}")
            ) from None


class RemoteCatalog:
    """The read side for the http engine (same methods as :class:`kernel.store.embedded.catalog.Catalog`)."""

    def __init__(self, index: Any, server: Server) -> None:
        self.index = index
        self.server = server

    def close(self) -> None:
        pass

    def _records(self, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        out = []
        for pid, session, _kind, _created, _state in rows:
            p = self.server.promise(pid)
            if p is None:
                continue  # indexed, but its create never reached the server
            if p["state"] in TERMINAL and _state is None:
                self.index.settled(pid, p["state"])
            out.append(record(p, session))
        return out

    def sessions(self) -> list[dict[str, Any]]:
        by_session: dict[str, dict[str, Any]] = {}
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
        from kernel.store.embedded.catalog import execution_summary

        rows = self.index.rows(session, "exec")
        if limit is not None:
            rows = rows[-limit:]
        return [execution_summary(r) for r in self._records(rows)]

    def count(self, session: str, kind: str = "exec") -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self._records(self.index.rows(session, kind)):
            counts[rec["state"]] = counts.get(rec["state"], 0) + 1
        return counts

    def promise(self, promise_id: str) -> dict[str, Any] | None:
        p = self.server.promise(promise_id)
        return None if p is None else record(p, self.index.session_of(promise_id))

    def checkpoints(self, session: str) -> list[dict[str, Any]]:
        recs = self._records(self.index.rows(session, "checkpoint"))
        return sorted((r for r in recs if r["state"] == "resolved"), key=lambda r: r["id"])

    def pending(self, session: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        recs = self._records(self.index.rows(session, kind, open_only=True))
        return [r for r in recs if r["state"] == "pending"]


# -- the engine --------------------------------------------------------------------------------


def _token_and_url(raw: str, env: Any) -> tuple[str | None, str]:
    """A bearer token (PYREPL3_TOKEN, RESONATE_TOKEN, or the URL's password) and the URL without userinfo."""
    parts = urlsplit(raw)
    token = env.get("PYREPL3_TOKEN") or env.get("RESONATE_TOKEN") or parts.password
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return token, urlunsplit((parts.scheme, host, parts.path.rstrip("/"), parts.query, "")).rstrip("/")


class HttpEngine(Engine):
    def __init__(self, spec: EngineSpec, blobs: BlobsSpec | None, home: Path, *, timeout: float | None = None, env: Any = None) -> None:
        import os

        self.spec = spec
        env = os.environ if env is None else env
        if blobs is None:
            msg = (
                f"{spec.setting}={redact(spec.target)} (a Resonate server) needs PYREPL3_BLOBS: a directory every "
                "machine can reach, or a postgresql://... DSN, for checkpoint blobs, the session index and the session lock"
            )
            raise ConfigurationError(msg)
        self.blobs_spec = blobs
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.token, self.url = _token_and_url(spec.target, env)
        self.server = Server(self.url, self.token, self.timeout)
        self.server.rpc("promise.get", {"id": f"pyrepl3-probe-{uuid.uuid4().hex}"})  # reachable at all?
        self.link: Any = None
        if blobs.kind == "postgres":
            from kernel.store.postgres.pg import PgLink, ensure_schema

            self.link = PgLink(blobs.target, timeout=self.timeout)
            try:
                ensure_schema(self.link.conn, blobs.target, resonate=False)
            except BaseException:
                self.link.close()
                raise
            # Its own connection: the runtime thread writes the index while the
            # main thread may be in the middle of a long blob transaction.
            self._index_link = PgLink(blobs.target, timeout=self.timeout)
            self.index: Any = PgIndex(self._index_link)
        else:
            self.shared = Path(blobs.target)
            self.index = SqliteIndex(self.shared / "index.sqlite3")

    @property
    def where(self) -> str:
        return f"{self.spec} (blobs: {self.blobs_spec})"

    def group(self, session: str) -> str:
        return f"pyrepl3-{session_key(session)}"

    def lock(self, session: str, wait: float = 0.0) -> Lock:
        if self.link is not None:
            from kernel.store.postgres.pg import PgSessionLock

            return PgSessionLock(self.link, session).acquire(wait=wait)
        from kernel.store.embedded.locks import SessionLock

        return SessionLock(self.shared, session).acquire(wait=wait)

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        group = self.group(session)
        network = IndexingNetwork(HttpConnection(self.url, auth=self.token), self.index, self.url)
        return network, [SSEConnection(self.url, pid=pid, group=group, auth=self.token)]  # type: ignore[list-item]

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        pending = [r["id"] for r in RemoteCatalog(self.index, self.server).pending(session, "exec")]
        for eid in pending:
            status, data = self.server.rpc("task.get", {"id": eid})
            task = (data or {}).get("task") if status == 200 and isinstance(data, dict) else None
            if task and task.get("state") == "acquired" and task.get("pid") != pid:
                self.server.rpc("task.release", {"id": eid, "version": task["version"]})
        return pending

    def catalog(self) -> Any:
        return RemoteCatalog(self.index, self.server)

    def blobs(self) -> Any:
        if self.link is not None:
            from kernel.store.postgres.blobs import PgBlobStore

            return PgBlobStore(self.link)
        from kernel.store.embedded.blobs import BlobStore

        return BlobStore(self.shared / "blobs")

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> dict[str, Any]:
        catalog = RemoteCatalog(self.index, self.server)
        rec = catalog.promise(promise_id)
        if rec is None:
            raise PyRepl3Error(f"no promise {promise_id!r} on {self.where}")
        if rec["state"] != "pending":
            raise PyRepl3Error(f"{promise_id} is already {rec['state']}; nothing was changed")
        value = msgspec.to_builtins(_codec.encode(data))
        status, _ = self.server.rpc("promise.settle", {"id": promise_id, "state": state, "value": value})
        if status != 200:
            raise PyRepl3Error(f"the Resonate server refused to settle {promise_id} (status {status})")
        settled = catalog.promise(promise_id)
        assert settled is not None
        return settled

    def healthy(self) -> bool:
        return self.link is None or not self.link.broken

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self._index_link.close()
        else:
            self.index.close()


__all__ = ["HttpEngine", "IndexingNetwork", "RemoteCatalog", "Server"]

