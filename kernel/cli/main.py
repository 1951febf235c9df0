"""The ``pyrepl3`` command: look into the durable store from outside a kernel.

    pyrepl3 sessions [--json]
    pyrepl3 executions [--session S] [--json]
    pyrepl3 show PROMISE_ID [--json]
    pyrepl3 pending [--session S] [--json]
    pyrepl3 answer PROMISE_ID VALUE
    pyrepl3 approve|deny PROMISE_ID [--reason R]
    pyrepl3 run NOTEBOOK.ipynb [--output OUT.ipynb]

Reads go straight to the store (safe while kernels are running on it).
The engine is chosen as for the kernel: ``--store`` or ``PYREPL3_STORE``
(a directory, ``postgresql://...`` or ``http(s)://...``); for the embedded
store, ``--home`` or ``PYREPL3_HOME`` is where it lives. Credentials in a DSN
or URL are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kernel.durable import hitl
from kernel.core.errors import PyRepl3Error
from kernel.store.records import error_of
from kernel.store.registry import open_engine


def _when(ms: int | None) -> str:
    return "-" if not ms else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _table(rows: list[list[str]], head: list[str]) -> str:
    rows = [head, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _catalog(args: argparse.Namespace) -> Any:
    engine = open_engine(os.environ, store=args.store or "", home=args.home or "")
    try:
        catalog = engine.catalog()
    except BaseException:
        engine.close()
        raise
    return _EngineCatalog(engine, catalog)


class _EngineCatalog:
    """A catalog that closes its engine with it."""

    def __init__(self, engine: Any, catalog: Any) -> None:
        self._engine, self._catalog = engine, catalog

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)

    def close(self) -> None:
        try:
            self._catalog.close()
        finally:
            self._engine.close()


def cmd_sessions(args: argparse.Namespace) -> int:
    with _closing(_catalog(args)) as cat:
        rows = cat.sessions()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sessions in this store yet")
        return 0
    print(_table([[r["session"], str(r["executions"]), str(r["pending"]), _when(r["last_at"])] for r in rows],
                 ["session", "executions", "pending", "last activity"]))
    return 0


def cmd_executions(args: argparse.Namespace) -> int:
    with _closing(_catalog(args)) as cat:
        rows = cat.executions(args.session)
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
        return 0
    if not rows:
        print("no executions" + (f" in session {args.session!r}" if args.session else ""))
        return 0
    body = []
    for r in rows:
        code = (r.code.strip().splitlines() or [""])[0][:50]
        body.append([str(r.execution_count or ""), r.state + (f" ({r.ename})" if r.ename else ""), _when(r.created_at), r.id, r.session, code])
    print(_table(body, ["#", "state", "started", "promise", "session", "code"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _closing(_catalog(args)) as cat:
        rec = cat.promise(args.promise_id)
    if rec is None:
        print(f"pyrepl3: no promise {args.promise_id!r} in this store", file=sys.stderr)
        return 1
    err = error_of(rec["value"])
    if err is not None:
        rec["error"] = err.model_dump()
    if args.json:
        print(json.dumps(rec, indent=2, default=str))
        return 0
    print(f"id:       {rec['id']}\nkind:     {rec['kind']}\nsession:  {rec['session']}\nstate:    {rec['state']}")
    print(f"created:  {_when(rec['created_at'])}\nsettled:  {_when(rec['settled_at'])}")
    if err is not None:
        print(f"error:    {err.ename}: {err.evalue}")
    print("value:    " + json.dumps(rec["value"], indent=2, default=str).replace("\n", "\n          "))
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    rec = hitl.answer(args.promise_id, args.value, args.home, store=args.store)
    print(f"{args.promise_id}: {rec['state']}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    approved = args.command == "approve"
    rec = hitl.decide(args.promise_id, approved, args.reason, args.home, store=args.store)
    print(f"{args.promise_id}: {'approved' if approved else 'denied'} ({rec['state']})")
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    items = hitl.pending(args.home, args.session, store=args.store)
    if args.json:
        print(json.dumps(items, indent=2, default=str))
        return 0
    if not items:
        print("no prompts are waiting")
        return 0
    print(_table([[i["id"], i["kind"] or "", i["session"], _when(i["created_at"]), str(i["prompt"])[:60]] for i in items],
                 ["promise", "kind", "session", "asked", "prompt"]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kernel.cli.run import run_notebook

    env = {"PYREPL3_HOME": args.home} if args.home else {}
    if args.store:
        env["PYREPL3_STORE"] = args.store
    return run_notebook(Path(args.notebook), Path(args.output) if args.output else None, timeout=args.timeout, env=env)


class _closing:
    def __init__(self, cat: Any) -> None:
        self.cat = cat

    def __enter__(self) -> Any:
        return self.cat

    def __exit__(self, *exc: Any) -> None:
        self.cat.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrepl3", description="Inspect PyREPL3's durable store.")
    parser.add_argument("--home", help="embedded store root (default: PYREPL3_HOME or <jupyter data dir>/pyrepl3)")
    parser.add_argument(
        "--store",
        help="the engine, as PYREPL3_STORE (default): a directory for the embedded store, "
        "postgresql://... for Postgres (resonate-pg), http(s)://... for a Resonate server",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sessions", help="list sessions with executions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_sessions)

    p = sub.add_parser("executions", help="list executions")
    p.add_argument("--session", help="only this session")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_executions)

    p = sub.add_parser("show", help="show one promise")
    p.add_argument("promise_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("pending", help="list prompts waiting for an answer")
    p.add_argument("--session", help="only this session")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_pending)

    p = sub.add_parser("answer", help="answer a waiting input() prompt")
    p.add_argument("promise_id")
    p.add_argument("value")
    p.set_defaults(fn=cmd_answer)

    p = sub.add_parser("run", help="execute a notebook headless; run again to resume after a crash")
    p.add_argument("notebook")
    p.add_argument("--output", help="where to write the executed notebook (default: the notebook itself)")
    p.add_argument("--timeout", type=float, default=None, help="seconds a single cell may run (default: no limit)")
    p.set_defaults(fn=cmd_run)

    for name in ("approve", "deny"):
        p = sub.add_parser(name, help=f"{name} a waiting approval request")
        p.add_argument("promise_id")
        p.add_argument("--reason", default="")
        p.set_defaults(fn=cmd_decide, command=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except PyRepl3Error as exc:
        print(f"pyrepl3: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
