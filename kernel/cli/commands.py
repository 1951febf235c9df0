"""What each ``pyrepl3`` subcommand does: read or answer the durable store, then render.

Every command is ``fn(args, out, settings) -> exit status``: ``args`` from the
parser (see :mod:`kernel.cli.main`), ``out`` where to write
(:class:`kernel.cli.render.Output`), ``settings`` the
:class:`~kernel.core.settings.Settings` the engine is chosen from. Reads go straight to the store, which is safe while kernels are
running on it.
"""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from pathlib import Path
from typing import Any

from kernel.cli.render import Column, Output
from kernel.core.ids import attempt_id, kind_of
from kernel.core.settings import Settings
from kernel.core.text import first_line, local_time
from kernel.durable import hitl
from kernel.store.records import error_of
from kernel.store.registry import open_engine


class _EngineCatalog:
    """A catalog that closes its engine with it."""

    def __init__(self, engine: Any, catalog: Any) -> None:
        self._engine, self._catalog = engine, catalog

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)

    def blobs(self) -> Any:
        """The engine's blob store (large outputs live there)."""
        return self._engine.blobs()

    def close(self) -> None:
        try:
            self._catalog.close()
        finally:
            self._engine.close()


def _catalog(settings: Settings) -> Any:
    engine = open_engine(settings)
    try:
        catalog = engine.catalog()
    except BaseException:
        engine.close()
        raise
    return _EngineCatalog(engine, catalog)


def sessions(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    with closing(_catalog(settings)) as cat:
        rows = cat.sessions()
    if args.json:
        out.json(rows)
    elif not rows:
        out.line("no sessions in this store yet")
    else:
        out.table(
            ["session", "executions", "pending", "last activity"],
            [[r["session"], str(r["executions"]), str(r["pending"]), local_time(r["last_at"])] for r in rows],
        )
    return 0


def executions(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    with closing(_catalog(settings)) as cat:
        rows = cat.executions(args.session)
    if args.json:
        out.json([r.model_dump() for r in rows])
    elif not rows:
        out.line("no executions" + (f" in session {args.session!r}" if args.session else ""))
    else:
        out.table(
            ["#", "state", "started", "promise", "session", Column("code", fold=True)],
            [
                [str(r.execution_count or ""), r.state + (f" ({r.ename})" if r.ename else ""), local_time(r.created_at),
                 r.id, r.session, first_line(r.code)]
                for r in rows
            ],
        )
    return 0


def _attempts(cat: Any, step: str) -> list[dict[str, Any]]:
    """The journaled failed attempts of a step that retries (``<step>:attempt:<k>``), in order."""
    found = []
    while (rec := cat.promise(attempt_id(step, len(found) + 1))) is not None:
        value = rec["value"] if isinstance(rec["value"], dict) else {}
        found.append({"id": rec["id"], "session": rec["session"], "ename": value.get("ename"), "evalue": value.get("evalue"),
                      "at": value.get("at"), "retry_at": value.get("retry_at")})
    return found


def show(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    with closing(_catalog(settings)) as cat:
        rec = cat.promise(args.promise_id)
        attempts = _attempts(cat, args.promise_id) if kind_of(args.promise_id) == "step" else []
    if rec is None and attempts:  # a retrying step still running, or left unfinished by a crash
        rec = {"id": args.promise_id, "kind": "step", "session": attempts[0]["session"], "state": "unfinished", "value": None,
               "created_at": None, "settled_at": None}
    if rec is None:
        out.error(f"no promise {args.promise_id!r} in this store")
        return 1
    err = error_of(rec["value"])
    if err is not None:
        rec["error"] = err.model_dump()
    if attempts:
        rec["attempts"] = attempts
    if args.json:
        out.json(rec, default=str)
        return 0
    fields = [("id", rec["id"]), ("kind", rec["kind"]), ("session", rec["session"]), ("state", rec["state"]),
              ("created", local_time(rec["created_at"])), ("settled", local_time(rec["settled_at"]))]
    if err is not None:
        fields.append(("error", f"{err.ename}: {err.evalue}"))
    for n, a in enumerate(attempts, 1):
        retry = f", next attempt due {local_time(a['retry_at'] * 1000)}" if isinstance(a["retry_at"], (int, float)) else ""
        fields.append(("attempt", f"{n} failed {local_time((a['at'] or 0) * 1000)}: {a['ename']}: {a['evalue']}{retry}"))
    for name, value in fields:
        out.line(f"{name + ':':<10}{value}")
    out.line("value:    " + json.dumps(rec["value"], indent=2, default=str).replace("\n", "\n" + " " * 10))
    return 0


def pending(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    items = hitl.pending(settings.home or None, args.session, store=settings.store or None)
    if args.json:
        out.json(items, default=str)
    elif not items:
        out.line("no prompts are waiting")
    else:
        out.table(
            ["promise", "kind", "session", "asked", Column("prompt", fold=True)],
            [[i["id"], i["kind"] or "", i["session"], local_time(i["created_at"]), str(i["prompt"])[:60]] for i in items],
        )
    return 0


def answer(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    rec = hitl.answer(args.promise_id, args.value, settings.home or None, store=settings.store or None)
    out.line(f"{args.promise_id}: {rec['state']}")
    return 0


def decide(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    approved = args.command == "approve"
    rec = hitl.decide(args.promise_id, approved, args.reason, settings.home or None, store=settings.store or None)
    out.line(f"{args.promise_id}: {'approved' if approved else 'denied'} ({rec['state']})")
    return 0


def run(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    # Imported here: nbclient and nbformat are only needed by this command.
    from kernel.cli.run import run_notebook

    kernel_env = {"PYREPL3_HOME": args.home} if args.home else {}
    if args.store:
        kernel_env["PYREPL3_STORE"] = args.store
    return run_notebook(Path(args.notebook), Path(args.output) if args.output else None, timeout=args.timeout, env=kernel_env)


def export(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Fill a notebook's cells with the latest stored outputs of a session (see :mod:`kernel.cli.export`)."""
    # Imported here: nbformat (and run's nbclient) are only needed by this command.
    from kernel.cli.export import export_notebook

    with closing(_catalog(settings)) as cat, closing(cat.blobs()) as blobs:
        report = export_notebook(
            Path(args.notebook), cat, session=args.session, output=Path(args.output) if args.output else None, blobs=blobs
        )
    if args.json:
        out.json(report.as_data())
        return 0
    if report.other_sessions:
        out.error(
            f"{1 + len(report.other_sessions)} sessions ran this notebook's cells; took {report.session} (the most "
            f"recently active), not {', '.join(report.other_sessions)}; choose one with --session"
        )
    out.line(f"pyrepl3 export: {report.summary()}")
    return 0


def settings_table(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Every setting: the value in force (secrets as ***), where it came from, its default and what it does."""
    rows = settings.rows()
    if args.json:
        keys = ("setting", "value", "source", "default", "help")
        out.json([dict(zip(keys, row, strict=True)) for row in rows])
    else:
        out.table(["setting", "value", "source", "default", "what it does"], rows)
    for problem in settings.problems.values():
        out.error(problem)
    return 0
