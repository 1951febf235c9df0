"""The Postgres engine: resonate-pg is the server, and every machine shares the database.

One link per kernel (:class:`~kernel.store.postgres.link.PgLink`) carries the
session lock, the catalog and the blobs; the runtime talks through
:class:`~kernel.store.postgres.network.PgNetwork`, its own small pool.
"""

from __future__ import annotations

from typing import Any

import psycopg
from resonate_base.connections import Network, Source

from kernel.core.errors import PyRepl3Error
from kernel.core.ids import session_key
from kernel.core.models import PromiseRecord
from kernel.core.locations import EngineSpec
from kernel.core.redaction import redact
from kernel.store.claims import Claims
from kernel.store.postgres.blobs import PgBlobStore
from kernel.store.postgres.catalog import PgCatalog
from kernel.store.postgres.link import DEFAULT_TIMEOUT, PgLink, unreachable
from kernel.store.postgres.lock import PgSessionLock
from kernel.store.postgres.network import PgNetwork
from kernel.store.postgres.reclaim import PgReclaimer
from kernel.store.postgres.recovery import interrupted_executions, release_dead_leases, settle


class PostgresEngine:
    """resonate-pg in a Postgres database: the engine every machine can share."""

    def __init__(self, spec: EngineSpec, *, timeout: float | None = None) -> None:
        self.spec = spec
        self.dsn = spec.target
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.link = PgLink(self.dsn, timeout=self.timeout, setting=spec.setting)
        self._network: PgNetwork | None = None

    def open(self) -> PostgresEngine:
        self.link.open(schema=True)
        return self

    @property
    def where(self) -> str:
        return str(self.spec)

    def group(self, session: str) -> str:
        # One group per session: the database is shared, and only this
        # session's kernel may pick up its executions.
        return f"pyrepl3-{session_key(session)}"

    def lock(self, session: str, wait: float = 0.0) -> PgSessionLock:
        return PgSessionLock(self.link, session).acquire(wait=wait)

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        self._network = PgNetwork(self.dsn, pid=pid, group=self.group(session), timeout=self.timeout)
        return self._network, None

    def worker_network(self, group: str, pid: str, claims: Claims | None = None) -> tuple[Network, list[Source] | None]:
        return PgNetwork(self.dsn, pid=pid, group=group, timeout=self.timeout, claims=claims), None

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        pending = interrupted_executions(self.link, session)
        release_dead_leases(self.link, pending, pid)
        return pending

    def catalog(self) -> PgCatalog:
        return PgCatalog(self.link)

    def blobs(self) -> PgBlobStore:
        return PgBlobStore(self.link)

    def reclaimer(self) -> PgReclaimer:
        return PgReclaimer(self.link)

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> PromiseRecord:
        """The database is the server: settle through resonate-pg's protocol, no inbox needed."""
        catalog = PgCatalog(self.link)
        record = catalog.promise(promise_id)
        if record is None:
            raise PyRepl3Error(f"no promise {promise_id!r} in the engine at {redact(self.dsn)}")
        if record["state"] != "pending":
            raise PyRepl3Error(f"{promise_id} is already {record['state']}; nothing was changed")
        try:
            with self.link.lock:
                status = settle(self.link.conn, promise_id, state, data)
        except psycopg.OperationalError as exc:
            raise unreachable(self.dsn, exc, self.spec.setting) from None
        if status != 200:
            raise PyRepl3Error(f"the engine refused to settle {promise_id} (status {status})")
        settled = catalog.promise(promise_id)
        assert settled is not None
        return settled

    def healthy(self) -> bool:
        return not self.link.broken

    def close(self) -> None:
        self.link.close()


__all__ = ["PostgresEngine"]
