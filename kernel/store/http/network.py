"""The runtime's connection to a Resonate server, indexing PyREPL3's promises on the way out."""

from __future__ import annotations

from resonate.connections import HttpConnection
from resonate_base.error import ConnectorError

from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import EngineConnectionError, PyRepl3Error
from kernel.core.redaction import redact, scrub
from kernel.store.http.index import PromiseIndex
from kernel.store.protocol import index_entry, one_line


class IndexingNetwork:
    """The SDK's ``HttpConnection``, writing each PyREPL3 promise into the index
    before its ``promise.create`` is sent (an index row whose promise never got
    created is skipped by readers; a promise without a row could be lost)."""

    def __init__(self, inner: HttpConnection, index: PromiseIndex, url: str, *, clock: Clock = SYSTEM) -> None:
        self.inner = inner
        self.index = index
        self.url = url
        self.clock = clock

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        entry = index_entry(req)
        if entry is not None:
            try:
                self.index.add(entry["id"], entry["session"], entry["kind"], self.clock.now_ms())
            except PyRepl3Error as exc:
                raise ConnectorError(exc) from None
        try:
            return await self.inner.send(req, headers)
        except ConnectorError as exc:
            raise ConnectorError(
                EngineConnectionError(f"the Resonate server at {redact(self.url)} is unreachable: {scrub(one_line(exc.error), self.url)}")
            ) from None


__all__ = ["IndexingNetwork"]
