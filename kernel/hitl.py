"""Human in the loop from any process: answer, approve or deny a waiting prompt.

    from kernel.hitl import pending, answer, approve, deny
    for p in pending():
        answer(p["id"], "42")

``home`` defaults to ``PYREPL3_HOME`` / the Jupyter data dir, as for the kernel.
The ``pyrepl3`` CLI is a thin layer over these functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kernel.config import resolve_home, store_path
from kernel.errors import PyRepl3Error
from kernel.store.catalog import Catalog
from kernel.store.outside import settle_from_outside


def _paths(home: str | Path | None) -> tuple[Path, Path]:
    h = resolve_home(os.environ, str(home) if home else "")
    return h, store_path(h)


def _kind(store: Path, promise_id: str) -> str:
    cat = Catalog(store)
    try:
        rec = cat.promise(promise_id)
    finally:
        cat.close()
    if rec is None:
        raise PyRepl3Error(f"no promise {promise_id!r} in the store {store}")
    param = rec["param"] if isinstance(rec["param"], dict) else {}
    return str(param.get("kind", "other"))


def pending(home: str | Path | None = None, session: str | None = None) -> list[dict[str, Any]]:
    """Prompts waiting for an answer: id, session, kind, prompt, details, times."""
    _, store = _paths(home)
    cat = Catalog(store)
    try:
        rows = cat.pending(session, kind="input")
    finally:
        cat.close()
    return [
        {
            "id": r["id"],
            "session": r["session"],
            "kind": (r["param"] or {}).get("kind"),
            "prompt": (r["param"] or {}).get("prompt", ""),
            "details": (r["param"] or {}).get("details"),
            "created_at": r["created_at"],
            "timeout_at": r["timeout_at"],
        }
        for r in rows
    ]


def answer(promise_id: str, value: str, home: str | Path | None = None) -> dict[str, Any]:
    """Answer an ``input()`` prompt; the waiting cell continues within a second."""
    h, store = _paths(home)
    kind = _kind(store, promise_id)
    if kind == "password":
        raise PyRepl3Error(f"{promise_id} is a getpass prompt: secrets are never stored, answer it in the notebook")
    if kind == "approval":
        raise PyRepl3Error(f"{promise_id} is an approval request: approve or deny it instead")
    if kind != "input":
        raise PyRepl3Error(f"{promise_id} is not a prompt")
    return settle_from_outside(h, store, promise_id, "resolved", {"value": value, "via": "outside"})


def decide(promise_id: str, approved: bool, reason: str = "", home: str | Path | None = None) -> dict[str, Any]:
    h, store = _paths(home)
    if _kind(store, promise_id) != "approval":
        raise PyRepl3Error(f"{promise_id} is not an approval request")
    data = {"approved": approved, "reason": reason, "via": "outside"}
    return settle_from_outside(h, store, promise_id, "resolved", data)


def approve(promise_id: str, reason: str = "", home: str | Path | None = None) -> dict[str, Any]:
    return decide(promise_id, True, reason, home)


def deny(promise_id: str, reason: str = "", home: str | Path | None = None) -> dict[str, Any]:
    return decide(promise_id, False, reason, home)
