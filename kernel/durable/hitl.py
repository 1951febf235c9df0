"""Human in the loop from any process: answer, approve or deny a waiting prompt.

    from kernel.durable.hitl import pending, answer, approve, deny
    for p in pending():
        answer(p["id"], "42")

The engine is chosen as for the kernel: ``store`` (else ``PYREPL3_STORE``)
names it, and ``home`` (else ``PYREPL3_HOME`` / the Jupyter data dir) is where
the embedded store lives. On Postgres the answer settles the prompt's promise
in the database directly, from any machine; the waiting kernel sees it there.
The ``pyrepl3`` CLI is a thin layer over these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kernel.core.errors import PyRepl3Error
from kernel.core.settings import Settings
from kernel.store.base import Engine
from kernel.store.registry import opened


def _engine(home: str | Path | None, store: str | None) -> Any:
    given = {"store": store, "home": str(home) if home else None}
    return opened(Settings.load().with_values(**{k: v for k, v in given.items() if v}))


def _kind(engine: Engine, promise_id: str) -> str:
    cat = engine.catalog()
    try:
        rec = cat.promise(promise_id)
    finally:
        cat.close()
    if rec is None:
        raise PyRepl3Error(f"no promise {promise_id!r} in the store {engine.where}")
    param = rec["param"] if isinstance(rec["param"], dict) else {}
    return str(param.get("kind", "other"))


def pending(home: str | Path | None = None, session: str | None = None, *, store: str | None = None) -> list[dict[str, Any]]:
    """Prompts waiting for an answer: id, session, kind, prompt, details, times."""
    with _engine(home, store) as engine:
        cat = engine.catalog()
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


def answer(promise_id: str, value: str, home: str | Path | None = None, *, store: str | None = None) -> dict[str, Any]:
    """Answer an ``input()`` prompt; the waiting cell continues within a second."""
    with _engine(home, store) as engine:
        kind = _kind(engine, promise_id)
        if kind == "password":
            raise PyRepl3Error(f"{promise_id} is a getpass prompt: secrets are never stored, answer it in the notebook")
        if kind == "approval":
            raise PyRepl3Error(f"{promise_id} is an approval request: approve or deny it instead")
        if kind != "input":
            raise PyRepl3Error(f"{promise_id} is not a prompt")
        return engine.settle_from_outside(promise_id, "resolved", {"value": value, "via": "outside"})


def decide(
    promise_id: str, approved: bool, reason: str = "", home: str | Path | None = None, *, store: str | None = None
) -> dict[str, Any]:
    with _engine(home, store) as engine:
        if _kind(engine, promise_id) != "approval":
            raise PyRepl3Error(f"{promise_id} is not an approval request")
        data = {"approved": approved, "reason": reason, "via": "outside"}
        return engine.settle_from_outside(promise_id, "resolved", data)


def approve(promise_id: str, reason: str = "", home: str | Path | None = None, *, store: str | None = None) -> dict[str, Any]:
    return decide(promise_id, True, reason, home, store=store)


def deny(promise_id: str, reason: str = "", home: str | Path | None = None, *, store: str | None = None) -> dict[str, Any]:
    return decide(promise_id, False, reason, home, store=store)
