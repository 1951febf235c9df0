"""The runtime's connection to the Postgres engine: resonate-pg's ``PostgresConnection``
(the SDK's ``Network`` and ``Source`` at once) over a pool with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from resonate_base.error import ConnectorError
from resonate_pg import PostgresConnection

from kernel.core.errors import EngineConnectionError
from kernel.store.postgres.link import DEFAULT_TIMEOUT, RPC_SQL, unreachable
from kernel.store.protocol import index_entry

#: Seconds a pooled connection may sit idle before it is checked on checkout.
CHECK_AFTER_IDLE = 2.0
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


__all__ = ["PgNetwork", "PgPool"]
