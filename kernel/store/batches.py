"""Batches of protocol requests, on every engine that applies them as one unit.

See :mod:`kernel.durable.inline` for why the kernel writes the end of a cell so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

#: How many executions settled by a batch are remembered for their task's fulfill.
REMEMBERED = 64


class FulfilledLater:
    """Executions a batch settled (the checkpoint and the settle as one transaction,
    :mod:`kernel.durable.inline`) whose task the SDK still holds.

    Settling an execution's promise completes its task, so the SDK's own fulfill,
    sent when ``durable_execute`` returns, would be refused (409) and logged as a
    failed execution. For these executions alone, that first fulfill is answered as
    done with the promise as the batch stored it (without reading it back): nothing
    changes, as for any settle of a settled promise. Any other fulfill of a
    completed task is still refused.
    """

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}

    def add(self, ids: Sequence[str], responses: list[dict[str, Any]]) -> None:
        """Remember ``ids`` with the promise records of a batch's ``responses``."""
        settled = {r["promise"]["id"]: r["promise"] for r in responses if isinstance(r.get("promise"), dict) and r["promise"].get("id") in ids}
        for pid in ids:
            if pid in settled and settled[pid].get("state") != "pending":
                self._records[pid] = settled[pid]
        while len(self._records) > REMEMBERED:
            del self._records[next(iter(self._records))]

    def reply(self, flat: Any) -> dict[str, Any] | None:
        """The response to ``flat`` if it is such a fulfill (once: a second one is refused as usual), else None."""
        if not isinstance(flat, dict) or flat.get("kind") != "task.fulfill":
            return None
        record = self._records.pop(flat.get("id"), None)  # type: ignore[arg-type]
        if record is None:
            return None
        return {"kind": "task.fulfill", "corrId": flat.get("corrId"), "status": 200, "promise": record}

    def reply_envelope(self, req: str) -> str | None:
        """As :meth:`reply`, for a request envelope as the SDK sends it (the response envelope)."""
        if '"task.fulfill"' not in req or not self._records:
            return None
        message = msgspec.json.decode(req)
        head = message.get("head") or {}
        flat = {**(message.get("data") or {}), "kind": message.get("kind"), "corrId": head.get("corrId")}
        if (done := self.reply(flat)) is None:
            return None
        envelope = {"kind": "task.fulfill", "head": {"corrId": head.get("corrId"), "status": 200, "version": head.get("version", "1")},
                    "data": {"promise": done["promise"]}}
        return msgspec.json.encode(envelope).decode()


__all__ = ["REMEMBERED", "FulfilledLater"]
