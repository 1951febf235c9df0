"""The http engine: a Resonate server reached through the SDK's HTTP and SSE connections.

The server keeps promises and tasks; what it does not offer is kept at
``PYREPL3_BLOBS``, a place every machine can reach:

* a Postgres DSN: the ``pyrepl3`` schema there holds the blobs (chunked, as
  with the Postgres engine), the promise index and the session lock
  (an advisory lock);
* a shared directory: ``blobs/`` (the file blob store), ``index.sqlite3``
  and ``locks/`` (``flock``; needs a file system with working POSIX locks).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from resonate.connections import HttpConnection, SSEConnection
from resonate_base.connections import Network, Source

from kernel.core.errors import ConfigurationError, PyRepl3Error
from kernel.core.ids import session_key
from kernel.core.models import PromiseRecord
from kernel.core.locations import BlobsSpec, EngineSpec
from kernel.core.redaction import redact
from kernel.store.claims import Claims
from kernel.store.base import BlobStore, SessionLock
from kernel.store.embedded.blobs import FileBlobStore
from kernel.store.embedded.locks import FlockSessionLock
from kernel.store.http.catalog import RemoteCatalog
from kernel.store.http.index import PgIndex, PromiseIndex, SqliteIndex
from kernel.store.http.network import IndexingNetwork
from kernel.store.http.server import Server, token_and_url
from kernel.store.modes import Modes
from kernel.store.postgres.blobs import PgBlobStore
from kernel.store.postgres.link import DEFAULT_TIMEOUT, PgLink
from kernel.store.postgres.lock import PgSessionLock
from kernel.store.protocol import acquired_by_other, encode_value


class HttpEngine:
    def __init__(
        self, spec: EngineSpec, blobs: BlobsSpec | None, *, timeout: float | None = None, token: str | None = None
    ) -> None:
        """``blobs`` is ``PYREPL3_BLOBS``; ``token`` the bearer token (else the URL's password)."""
        self.spec = spec
        if blobs is None:
            msg = (
                f"{spec.setting}={redact(spec.target)} (a Resonate server) needs PYREPL3_BLOBS: a directory every "
                "machine can reach, or a postgresql://... DSN, for checkpoint blobs, the session index and the session lock"
            )
            raise ConfigurationError(msg)
        self.blobs_spec = blobs
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.token, self.url = token_and_url(spec.target, token)
        self.server = Server(self.url, self.token, self.timeout)
        self.link: PgLink | None = None
        self._index_link: PgLink | None = None
        self.shared = Path(blobs.target)
        self.index: PromiseIndex
        if blobs.kind == "postgres":
            self.link = PgLink(blobs.target, timeout=self.timeout, setting="PYREPL3_BLOBS")
            # Its own connection: the runtime thread writes the index while the
            # main thread may be in the middle of a long blob transaction.
            self._index_link = PgLink(blobs.target, timeout=self.timeout, setting="PYREPL3_BLOBS")
            self.index = PgIndex(self._index_link)
        else:
            self.index = SqliteIndex(self.shared / "index.sqlite3")

    def open(self) -> HttpEngine:
        self.server.rpc("promise.get", {"id": f"pyrepl3-probe-{uuid.uuid4().hex}"})  # reachable at all?
        if self.link is not None and self._index_link is not None:
            self.link.open(schema=True, resonate=False)
            self._index_link.open()
        else:
            assert isinstance(self.index, SqliteIndex)
            self.index.open()
        return self

    @property
    def where(self) -> str:
        return f"{self.spec} (blobs: {self.blobs_spec})"

    def group(self, session: str) -> str:
        return f"pyrepl3-{session_key(session)}"

    def lock(self, session: str, wait: float = 0.0) -> SessionLock:
        if self.link is not None:
            return PgSessionLock(self.link, session).acquire(wait=wait)
        return FlockSessionLock(self.shared, session, setting="PYREPL3_BLOBS", modes=Modes.like(self.shared)).acquire(wait=wait)

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        group = self.group(session)
        network = IndexingNetwork(HttpConnection(self.url, auth=self.token), self.index, self.url)
        return network, [SSEConnection(self.url, pid=pid, group=group, auth=self.token)]  # type: ignore[list-item]

    def worker_network(self, group: str, pid: str, claims: Claims | None = None) -> tuple[Network, list[Source] | None]:
        # The server pushes tasks (SSE): ``claims`` cannot hold them back here; the SDK's own bound applies.
        network = IndexingNetwork(HttpConnection(self.url, auth=self.token), self.index, self.url)
        return network, [SSEConnection(self.url, pid=pid, group=group, auth=self.token)]  # type: ignore[list-item]

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        pending = [r["id"] for r in self.catalog().pending(session, "exec")]
        for eid in pending:
            task = acquired_by_other(*self.server.rpc("task.get", {"id": eid}), pid)
            if task is not None:
                self.server.rpc("task.release", {"id": eid, "version": task["version"]})
        return pending

    def catalog(self) -> RemoteCatalog:
        return RemoteCatalog(self.index, self.server)

    def blobs(self) -> BlobStore:
        if self.link is not None:
            return PgBlobStore(self.link)
        return FileBlobStore(self.shared / "blobs", modes=Modes.like(self.shared)).open()

    def reclaimer(self) -> Any:
        """Checkpoint records live on the Resonate server, which has no delete: nothing is reclaimed there."""
        raise ConfigurationError(
            f"garbage collection is not available with a Resonate server ({self.where}): it cannot delete promises"
        )

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> PromiseRecord:
        catalog = self.catalog()
        rec = catalog.promise(promise_id)
        if rec is None:
            raise PyRepl3Error(f"no promise {promise_id!r} on {self.where}")
        if rec["state"] != "pending":
            raise PyRepl3Error(f"{promise_id} is already {rec['state']}; nothing was changed")
        status, _ = self.server.rpc("promise.settle", {"id": promise_id, "state": state, "value": encode_value(data)})
        if status != 200:
            raise PyRepl3Error(f"the Resonate server refused to settle {promise_id} (status {status})")
        settled = catalog.promise(promise_id)
        assert settled is not None
        return settled

    def healthy(self) -> bool:
        return self.link is None or not self.link.broken

    def close(self) -> None:
        if self.link is not None and self._index_link is not None:
            self.link.close()
            self._index_link.close()
        else:
            self.index.close()


__all__ = ["HttpEngine"]
