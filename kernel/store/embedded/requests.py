"""What the embedded store reads off a flat protocol request before applying it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resonate.connections.local import extract_action_data

#: How many executions settled by a batch are remembered for their task's fulfill.
REMEMBERED = 64


def referenced_ids(req: Any) -> list[str]:
    """The promise/task ids a flat request touches, so they can be paged in."""
    if not isinstance(req, dict):
        return []
    kind = req.get("kind")
    ids: list[str] = []

    def add(v: Any) -> None:
        if isinstance(v, str) and v:
            ids.append(v)

    if kind == "promise.register_listener":
        add(req.get("awaited"))
    else:
        add(req.get("id"))
    action = req.get("action")
    if action is not None:
        add((extract_action_data(action) or {}).get("id"))
    actions = req.get("actions")
    if isinstance(actions, list):
        for a in actions:
            add((extract_action_data(a) or {}).get("awaited"))
    tasks = req.get("tasks")
    if isinstance(tasks, list):
        for t in tasks:
            if isinstance(t, dict):
                add(t.get("id"))
    return ids


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
