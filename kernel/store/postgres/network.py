"""The runtime's connection to the Postgres engine: resonate-pg's ``PostgresConnection``
(the SDK's ``Network`` and ``Source`` at once) over a pool with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence
from typing import Any

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool
from resonate_base.error import ConnectorError
from resonate_pg import PostgresConnection
from resonate_pg.connection import DEQUEUE_EXECUTE_SQL
from resonate_pg.wire import execute_message

from kernel.core.errors import EngineConnectionError
from kernel.store.postgres.link import DEFAULT_TIMEOUT, RPC_SQL, unreachable
from kernel.store.batches import FulfilledLater
from kernel.store.claims import Claims
from kernel.store.protocol import flat_response, index_entry

#: Seconds a pooled connection may sit idle before it is checked on checkout.
CHECK_AFTER_IDLE = 2.0
#: The most connections a worker's pool opens, however many threads it has.
MAX_WORKER_POOL = 32
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

#: Several requests in one statement (one round trip, one transaction), in order, with the
#: index rows of the creates among them; their responses in the same order.
BATCH_SQL = """
WITH res AS MATERIALIZED (
    SELECT n, resonate.resonate_rpc(req::jsonb) AS r FROM unnest(%(reqs)s::text[]) WITH ORDINALITY AS t(req, n)
),
ins AS (
    INSERT INTO pyrepl3.promises (id, session, kind, created_at)
    SELECT e.id, e.session, e.kind,
           COALESCE((res.r #>> '{data,promise,createdAt}')::bigint, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
    FROM res JOIN jsonb_to_recordset(%(entries)s::jsonb) AS e(n bigint, id text, session text, kind text) ON e.n = res.n
    WHERE (res.r #>> '{head,status}') = '200'
    ON CONFLICT (id) DO NOTHING
)
SELECT r::text FROM res ORDER BY n
"""


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


class PgNetwork(PostgresConnection):
    """resonate-pg's connection (Network + Source) that also indexes PyREPL3's
    promises and never lets the DSN's password into an error message."""

    def __init__(
        self,
        dsn: str,
        *,
        pid: str,
        group: str,
        timeout: float = DEFAULT_TIMEOUT,
        drive_timers: bool = True,
        claims: Claims | None = None,
    ) -> None:
        # A worker's calls each renew, fulfil and journal through the pool: a connection per thread, and two for the reader.
        size = 4 if claims is None else max(4, min(claims.capacity + 2, MAX_WORKER_POOL))
        super().__init__(sessions=PgPool(dsn, timeout=timeout, max_size=size), pid=pid, group=group, drive_timers=drive_timers)
        self._dsn = dsn
        self._timers_at = 0.0
        #: A worker's: claim only as many tasks as it can start (:mod:`kernel.store.claims`).
        self._claims = claims
        if claims is not None:
            claims.on_room = self._wake.set
        #: Executions a batch settled whose task the SDK fulfills afterwards.
        self._fulfilled_later = FulfilledLater()

    async def _fire_timers(self) -> None:
        """Pump resonate-pg's timers once per tick, not on every wake-up: a cell's
        hand-off (a NOTIFY) then does not wait for a scan of due timeouts."""
        now = time.monotonic()
        if now - self._timers_at >= self._tick:
            self._timers_at = now
            await super()._fire_timers()

    async def _dequeue_executes(self, conn: Any, address: str) -> list[str]:
        """A worker claims at most its :meth:`Claims.room` (one read, no paging); a kernel, everything."""
        if self._claims is None:
            return await super()._dequeue_executes(conn, address)
        room = min(self._claims.room(), self._limit)
        if room <= 0:
            return []
        cursor = await conn.execute(DEQUEUE_EXECUTE_SQL, (address, room))
        rows = await cursor.fetchall()
        for task_id, _version in rows:
            self._claims.claimed(str(task_id))
        return [execute_message(str(task_id), int(version)) for task_id, version in rows]

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        if self._stopped:
            raise ConnectorError(EngineConnectionError("the engine connection has been stopped"))
        if (done := self._fulfilled_later.reply_envelope(req)) is not None:
            return done
        entry = index_entry(req)
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

    async def send_batch(self, flats: list[Any], *, fulfilled_later: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Apply flat requests as one unit: one statement, one round trip, one transaction
        (:mod:`kernel.durable.inline`); their flat responses, in order."""
        if self._stopped:
            raise ConnectorError(EngineConnectionError("the engine connection has been stopped"))
        reqs, entries = [], []
        for n, flat in enumerate(flats, 1):
            data = {k: v for k, v in flat.items() if k not in ("kind", "corrId")}
            req = msgspec.json.encode({"kind": flat["kind"], "head": {"corrId": flat["corrId"], "version": "1"}, "data": data}).decode()
            reqs.append(req)
            if (entry := index_entry(req)) is not None:
                entries.append({"n": n, **entry})
        try:
            async with self._sessions.session() as conn:
                cursor = await conn.execute(BATCH_SQL, {"reqs": reqs, "entries": msgspec.json.encode(entries).decode()})
                rows = await cursor.fetchall()
        except Exception as exc:  # noqa: BLE001 - every substrate failure is a ConnectorError
            raise ConnectorError(unreachable(self._dsn, exc)) from None
        if len(rows) != len(flats):
            raise ConnectorError(EngineConnectionError("resonate.resonate_rpc returned no row"))
        responses = [flat_response(msgspec.json.decode(row[0])) for row in rows]
        self._fulfilled_later.add(fulfilled_later, responses)
        return responses


__all__ = ["PgNetwork", "PgPool"]
