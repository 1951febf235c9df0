"""The Postgres engine: resonate-pg is the server, the database is shared by every machine.

resonate-pg is an SQL schema (``resonate``) whose stored procedures *are* the
Resonate protocol; ``resonate_pg.PostgresConnection`` speaks it as both the
SDK's ``Network`` and its ``Source``. PyREPL3 adds a small schema of its own,
``pyrepl3``, in the same database:

``pyrepl3.promises``     an index of the promises kernels create (id, session,
                         kind, time). resonate-pg has no ``promise.search``;
                         the index row is written in the same statement as the
                         promise itself, so the two never disagree.
``pyrepl3.sessions``     who holds a session (for the "in use by" message).
``pyrepl3.blobs`` and    checkpoint blobs, chunked (see :mod:`kernel.store.postgres.blobs`).
``pyrepl3.blob_chunks``

One live kernel per session is a session-level advisory lock
(``pg_try_advisory_lock``) held on a dedicated connection: Postgres drops it
when that connection ends, including when the kernel is killed.

Every message that names the database goes through :func:`kernel.core.settings.redact`
/ :func:`kernel.core.settings.scrub`: a DSN's password never reaches a log or a cell.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool
from resonate.codec import Codec, NoopEncryptor
from resonate.types import Value
from resonate_base.error import ConnectorError
from resonate_pg import PostgresConnection

from kernel.core.settings import redact, scrub
from kernel.core.errors import EngineConnectionError, StoreError, StoreLockedError
from kernel.core.ids import SESSION_TAG, kind_of
from kernel.store.embedded.catalog import matching
from kernel.core.models import ExecutionSummary

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: Seconds to wait for a connection (connect, or a free pooled one) before the
#: engine counts as unreachable.
DEFAULT_TIMEOUT = 5.0
#: Seconds a pooled connection may sit idle before it is checked on checkout.
CHECK_AFTER_IDLE = 2.0

DDL = """
CREATE TABLE IF NOT EXISTS pyrepl3.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS pyrepl3.promises (
    id text PRIMARY KEY,
    session text NOT NULL,
    kind text NOT NULL,
    created_at bigint NOT NULL
);
-- 2: the terminal state once seen (the http engine's promises live on the server).
ALTER TABLE pyrepl3.promises ADD COLUMN IF NOT EXISTS state text;
CREATE INDEX IF NOT EXISTS promises_by_session ON pyrepl3.promises (session, kind, created_at);
CREATE INDEX IF NOT EXISTS promises_by_kind ON pyrepl3.promises (kind, created_at);
CREATE TABLE IF NOT EXISTS pyrepl3.sessions (
    session text PRIMARY KEY,
    owner text NOT NULL,
    since bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS pyrepl3.blobs (
    digest text PRIMARY KEY,
    size bigint NOT NULL,
    chunks integer NOT NULL,
    created_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS pyrepl3.blob_chunks (
    digest text NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (digest, seq)
);
-- Pickles and array buffers rarely compress; don't spend CPU trying (TOAST, no pglz).
ALTER TABLE pyrepl3.blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
INSERT INTO pyrepl3.meta VALUES ('schema', '2') ON CONFLICT (key) DO UPDATE SET value = excluded.value;
"""

RPC_SQL = "SELECT resonate.resonate_rpc(%s::text::jsonb)::text"
#: A promise.create and its index row, in one statement (one round trip, one transaction).
INDEXED_RPC_SQL = """
WITH res AS MATERIALIZED (SELECT resonate.resonate_rpc(%(req)s::text::jsonb) AS r),
ins AS (
    INSERT INTO pyrepl3.promises (id, session, kind, created_at)
    SELECT %(id)s, %(session)s, %(kind)s,
           COALESCE((r #>> '{data,promise,createdAt}')::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
    FROM res WHERE (r #>> '{head,status}') = '200'
    ON CONFLICT (id) DO NOTHING
)
SELECT r::text FROM res
"""
#: The columns a catalog record is built from (``p`` = resonate.promises, ``i`` = the index).
RECORD_COLUMNS = (
    "p.id, i.session, p.state, p.param_data, p.value_data, p.tags, p.timeout_at, p.created_at, p.settled_at, p.is_timer"
)

_codec = Codec(NoopEncryptor())


# -- connecting -------------------------------------------------------------------


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def unreachable(dsn: str, exc: BaseException) -> EngineConnectionError:
    return EngineConnectionError(f"the Postgres engine at {redact(dsn)} is unreachable: {scrub(one_line(exc), dsn)}")


def connect(dsn: str, *, timeout: float = DEFAULT_TIMEOUT) -> psycopg.Connection[Any]:
    """An autocommit connection, or :class:`EngineConnectionError` (RES004) saying why not."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=max(2, int(timeout)))
    except psycopg.Error as exc:
        raise unreachable(dsn, exc) from None


def ensure_schema(conn: psycopg.Connection[Any], dsn: str, *, resonate: bool = True) -> None:
    """Check that resonate-pg is installed (unless ``resonate`` is false: a
    database that only holds blobs and the index); create PyREPL3's own schema if missing."""
    try:
        row = conn.execute(
            "SELECT to_regprocedure('resonate.resonate_rpc(jsonb)') IS NOT NULL, to_regclass('pyrepl3.meta') IS NOT NULL"
        ).fetchone()
        assert row is not None
        has_resonate, has_ours = row
        if resonate and not has_resonate:
            msg = (
                f"the database at {redact(dsn)} has no resonate-pg schema (resonate.resonate_rpc is missing); "
                "apply resonate.sql from https://github.com/resonatehq/resonate-pg to it first"
            )
            raise StoreError(msg)
        if has_ours:
            version = conn.execute("SELECT value FROM pyrepl3.meta WHERE key = 'schema'").fetchone()
            if version is not None and int(version[0]) > SCHEMA_VERSION:
                msg = f"the pyrepl3 schema at {redact(dsn)} has version {version[0]}; this PyREPL3 reads up to {SCHEMA_VERSION}"
                raise StoreError(msg)
            if version is not None and int(version[0]) == SCHEMA_VERSION:
                return
        with conn.transaction():
            # Two kernels creating the schema at once would race on the catalogs.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('pyrepl3:schema', 0))")
            # An administrator may have made the schema for a role without CREATE on the database.
            if conn.execute("SELECT to_regnamespace('pyrepl3') IS NULL").fetchone()[0]:  # type: ignore[index]
                conn.execute("CREATE SCHEMA pyrepl3")
            conn.execute(DDL)
    except psycopg.OperationalError as exc:
        raise unreachable(dsn, exc) from None
    except psycopg.Error as exc:
        msg = f"cannot set up PyREPL3's schema in the database at {redact(dsn)}: {scrub(one_line(exc), dsn)}"
        raise StoreError(msg) from None


class PgLink:
    """The kernel's synchronous connection: session lock, catalog reads, blob I/O.

    One connection for the three keeps a kernel at a handful of backends
    (this one, the LISTEN connection, a small pool for the runtime). psycopg
    connections serialize their own use, so sharing across threads is safe.
    """

    def __init__(self, dsn: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.conn = connect(dsn, timeout=timeout)
        self.lock = threading.RLock()

    @property
    def broken(self) -> bool:
        """True once the connection is known to be gone. Costs no round trip:
        an idle connection whose socket turned readable has either a message
        or an end of stream waiting, and reading it tells which."""
        conn = self.conn
        if conn.closed or conn.broken:
            return True
        if not self.lock.acquire(blocking=False):
            return False  # in use right now: whoever uses it will find out
        try:
            for _ in range(4):  # e.g. a termination notice, then the end of stream
                readable, _, _ = select.select([conn.fileno()], [], [], 0)
                if not readable:
                    break
                conn.pgconn.consume_input()
        except (OSError, ValueError, psycopg.OperationalError):
            return True
        finally:
            self.lock.release()
        return conn.pgconn.status != psycopg.pq.ConnStatus.OK

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


# -- the session lock ----------------------------------------------------------------


def lock_key(session: str) -> int:
    """A signed 64-bit advisory-lock key for a session."""
    return int.from_bytes(hashlib.sha256(f"{SESSION_TAG}:{session}".encode()).digest()[:8], "big", signed=True)


def _owner() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


class PgSessionLock:
    """One live kernel per session, across machines: an advisory lock on ``link``."""

    def __init__(self, link: PgLink, session: str) -> None:
        self.link = link
        self.session = session
        self.key = lock_key(session)
        self.held = False

    def acquire(self, wait: float = 0.0) -> PgSessionLock:
        deadline = time.monotonic() + wait
        conn = self.link.conn
        try:
            while True:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                if row and row[0]:
                    break
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = conn.execute("SELECT owner FROM pyrepl3.sessions WHERE session = %s", (self.session,)).fetchone()
                msg = (
                    f"session {self.session!r} is in use by a live kernel ({holder[0] if holder else 'another process'}); "
                    f"engine {redact(self.link.dsn)}. Stop that kernel or set PYREPL3_SESSION to another id."
                )
                raise StoreLockedError(msg)
            conn.execute(
                "INSERT INTO pyrepl3.sessions VALUES (%s, %s, %s) ON CONFLICT (session) DO UPDATE "
                "SET owner = excluded.owner, since = excluded.since",
                (self.session, _owner(), int(time.time() * 1000)),
            )
        except psycopg.OperationalError as exc:
            raise unreachable(self.link.dsn, exc) from None
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(psycopg.Error):
                self.link.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))


# -- the runtime's connection ----------------------------------------------------------


class PgPool:
    """resonate-pg's ``PgSessions`` with bounded waits: an unreachable database
    fails a request within ``timeout`` seconds instead of psycopg_pool's 30."""

    def __init__(self, dsn: str, *, timeout: float = DEFAULT_TIMEOUT, max_size: int = 4) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._max_size = max_size
        self._pool: AsyncConnectionPool | None = None
        self._lock: Any = None
        self._used: dict[int, float] = {}

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        pool = await self._ensure_pool()
        async with pool.connection(timeout=self._timeout) as conn:
            yield conn
            self._used[id(conn)] = time.monotonic()

    async def _check(self, conn: Any) -> None:
        """Check a pooled connection on checkout -- unless it worked a moment ago:
        a connection the server dropped (restart, network cut) is replaced
        instead of failing the request, without a round trip per request."""
        if time.monotonic() - self._used.get(id(conn), 0.0) > CHECK_AFTER_IDLE:
            await AsyncConnectionPool.check_connection(conn)

    async def dedicated(self) -> Any:
        return await psycopg.AsyncConnection.connect(self._dsn, autocommit=True, connect_timeout=max(2, int(self._timeout)))

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=2)

    async def _ensure_pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            import asyncio

            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._pool is None:
                    pool = AsyncConnectionPool(
                        self._dsn,
                        min_size=1,
                        max_size=self._max_size,
                        open=False,
                        timeout=self._timeout,
                        # One statement per request (each resonate-pg action is a single
                        # function call): autocommit saves the BEGIN and COMMIT round trips.
                        kwargs={"connect_timeout": max(2, int(self._timeout)), "autocommit": True},
                        check=self._check,
                        reconnect_timeout=60.0,
                    )
                    await pool.open(wait=False)
                    self._pool = pool
        return self._pool


def _index_entry(req: str) -> dict[str, str] | None:
    """For a ``promise.create`` of a PyREPL3 session: the index row to write with it."""
    if '"promise.create"' not in req or SESSION_TAG not in req:
        return None
    try:
        envelope = msgspec.json.decode(req)
    except msgspec.DecodeError:
        return None
    if not isinstance(envelope, dict) or envelope.get("kind") != "promise.create":
        return None
    data = envelope.get("data") or {}
    session = (data.get("tags") or {}).get(SESSION_TAG)
    pid = data.get("id")
    if not isinstance(session, str) or not isinstance(pid, str):
        return None
    return {"id": pid, "session": session, "kind": kind_of(pid)}


class PgNetwork(PostgresConnection):
    """resonate-pg's connection (Network + Source) that also indexes PyREPL3's
    promises and never lets the DSN's password into an error message."""

    def __init__(self, dsn: str, *, pid: str, group: str, timeout: float = DEFAULT_TIMEOUT, drive_timers: bool = True) -> None:
        super().__init__(sessions=PgPool(dsn, timeout=timeout), pid=pid, group=group, drive_timers=drive_timers)
        self._dsn = dsn
        self._timers_at = 0.0

    async def _fire_timers(self) -> None:
        """Pump resonate-pg's timers once per tick, not on every wake-up: a cell's
        hand-off (a NOTIFY) then does not wait for a scan of due timeouts."""
        now = time.monotonic()
        if now - self._timers_at >= self._tick:
            self._timers_at = now
            await super()._fire_timers()

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        if self._stopped:
            raise ConnectorError(EngineConnectionError("the engine connection has been stopped"))
        entry = _index_entry(req)
        try:
            async with self._sessions.session() as conn:
                if entry is None:
                    cursor = await conn.execute(RPC_SQL, (req,))
                else:
                    cursor = await conn.execute(INDEXED_RPC_SQL, {"req": req, **entry})
                row = await cursor.fetchone()
        except Exception as exc:  # noqa: BLE001 - every substrate failure is a ConnectorError
            raise ConnectorError(unreachable(self._dsn, exc)) from None
        if row is None or row[0] is None:
            raise ConnectorError(EngineConnectionError("resonate.resonate_rpc returned no row"))
        return str(row[0])


# -- protocol calls from synchronous code -------------------------------------------------


def rpc(conn: psycopg.Connection[Any], kind: str, data: dict[str, Any]) -> tuple[int, Any]:
    """One resonate-pg protocol request on a synchronous connection: (status, data)."""
    envelope = {"kind": kind, "head": {"corrId": f"pyrepl3-{uuid.uuid4().hex}", "version": "1"}, "data": data}
    row = conn.execute(RPC_SQL, (msgspec.json.encode(envelope).decode(),)).fetchone()
    assert row is not None
    response = msgspec.json.decode(row[0])
    return int(response["head"]["status"]), response.get("data")


def interrupted_executions(link: PgLink, session: str) -> list[str]:
    """``exec:`` promises of ``session`` still pending: their kernel died (the caller holds the lock)."""
    with link.lock:
        rows = link.conn.execute(
            "SELECT p.id FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            "WHERE i.session = %s AND i.kind = 'exec' AND p.state = 'pending' ORDER BY p.created_at, p.id",
            (session,),
        ).fetchall()
    return [r[0] for r in rows]


def release_dead_leases(link: PgLink, execution_ids: list[str], pid: str) -> list[str]:
    """Give back tasks a dead kernel of this session still leases, so they are
    re-delivered now rather than when the lease runs out. The caller holds the
    session lock, so no live process owns them."""
    released = []
    with link.lock:
        for eid in execution_ids:
            status, data = rpc(link.conn, "task.get", {"id": eid})
            task = (data or {}).get("task") if status == 200 and isinstance(data, dict) else None
            if not task or task.get("state") != "acquired" or task.get("pid") == pid:
                continue
            status, _ = rpc(link.conn, "task.release", {"id": eid, "version": task["version"]})
            if status == 200:
                released.append(eid)
    if released:
        log.info("released leases of a dead kernel: %s", ", ".join(released))
    return released


def settle(conn: psycopg.Connection[Any], promise_id: str, state: str, data: Any) -> int:
    """``promise.settle`` through the protocol; returns the status."""
    value = msgspec.to_builtins(_codec.encode(data))
    status, _ = rpc(conn, "promise.settle", {"id": promise_id, "state": state, "value": value})
    return status


# -- the read side ------------------------------------------------------------------------


def _decode(data: str | None) -> Any:
    return _codec.decode(Value(headers=None, data=data)) if data else None


def record(row: tuple[Any, ...], now_ms: int | None = None) -> dict[str, Any]:
    """A catalog record (as :func:`kernel.store.embedded.catalog.decode_record` gives) from :data:`RECORD_COLUMNS`."""
    pid, session, state, param, value, tags, timeout_at, created_at, settled_at, is_timer = row
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if state == "pending" and timeout_at <= now_ms:  # resonate-pg times promises out on read
        state, settled_at = ("resolved" if is_timer else "rejected_timedout"), timeout_at
    return {
        "id": pid,
        "kind": kind_of(pid),
        "state": state,
        "param": _decode(param),
        "value": _decode(value),
        "tags": tags or {},
        "timeout_at": timeout_at,
        "created_at": created_at,
        "settled_at": settled_at,
        "session": session,
    }


class PgCatalog:
    """The read side over Postgres (same methods as :class:`kernel.store.embedded.catalog.Catalog`).

    Reads join PyREPL3's index with resonate-pg's promise table, so the role
    needs SELECT on ``resonate.promises`` (see README, "Scale out").
    """

    def __init__(self, link: PgLink, *, owned: bool = False) -> None:
        self.link = link
        self._owned = owned

    @classmethod
    def open(cls, dsn: str) -> PgCatalog:
        link = PgLink(dsn)
        try:
            ensure_schema(link.conn, dsn)
        except BaseException:
            link.close()
            raise
        return cls(link, owned=True)

    def close(self) -> None:
        if self._owned:
            self.link.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self.link.lock:
                return self.link.conn.execute(sql, args).fetchall()
        except psycopg.OperationalError as exc:
            raise unreachable(self.link.dsn, exc) from None

    def sessions(self) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT i.session, count(*), count(*) FILTER (WHERE p.state = 'pending'), min(i.created_at), max(i.created_at) "
            "FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id WHERE i.kind = 'exec' "
            "GROUP BY i.session ORDER BY max(i.created_at) DESC"
        )
        return [{"session": s, "executions": n, "pending": p, "first_at": a, "last_at": b} for s, n, p, a, b in rows]

    def executions(self, session: str | None = None, limit: int | None = None) -> list[ExecutionSummary]:
        from kernel.store.embedded.catalog import execution_summary

        where, args = matching("%s", **{"i.session": session})
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            f"WHERE i.kind = 'exec'{where} ORDER BY i.created_at DESC, i.id DESC"
        )
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        out = [execution_summary(record(row)) for row in self._rows(sql, tuple(args))]
        out.reverse()
        return out

    def count(self, session: str, kind: str = "exec") -> dict[str, int]:
        rows = self._rows(
            "SELECT p.state, count(*) FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            "WHERE i.session = %s AND i.kind = %s GROUP BY p.state",
            (session, kind),
        )
        return dict(rows)

    def promise(self, promise_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            f"SELECT {RECORD_COLUMNS} FROM resonate.promises p LEFT JOIN pyrepl3.promises i ON i.id = p.id WHERE p.id = %s",
            (promise_id,),
        )
        return record(rows[0]) if rows else None

    def checkpoints(self, session: str) -> list[dict[str, Any]]:
        rows = self._rows(
            f"SELECT {RECORD_COLUMNS} FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            "WHERE i.session = %s AND i.kind = 'checkpoint' AND p.state = 'resolved' ORDER BY i.id",
            (session,),
        )
        return [record(row) for row in rows]

    def pending(self, session: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        now = int(time.time() * 1000)
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM resonate.promises p JOIN pyrepl3.promises i ON i.id = p.id "
            "WHERE p.state = 'pending' AND p.timeout_at > %s"
        )
        where, filters = matching("%s", **{"i.session": session, "i.kind": kind})
        sql += where
        args: list[Any] = [now, *filters]
        return [record(row, now) for row in self._rows(sql + " ORDER BY p.created_at, p.id", tuple(args))]


__all__ = [
    "PgCatalog",
    "PgLink",
    "PgNetwork",
    "PgSessionLock",
    "connect",
    "ensure_schema",
    "interrupted_executions",
    "release_dead_leases",
]
