"""What the embedded store reads off a flat protocol request before applying it."""

from __future__ import annotations

from typing import Any

from resonate.connections.local import extract_action_data


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
