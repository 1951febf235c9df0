"""The ``pyrepl3`` command: look into the durable store from outside a kernel.

    pyrepl3 sessions [--json]
    pyrepl3 executions [--session S] [--json]
    pyrepl3 show PROMISE_ID [--json]
    pyrepl3 pending [--session S] [--json]
    pyrepl3 answer PROMISE_ID VALUE
    pyrepl3 approve|deny PROMISE_ID [--reason R]
    pyrepl3 run NOTEBOOK.ipynb [--output OUT.ipynb]
    pyrepl3 export NOTEBOOK.ipynb [--session S] [--output OUT.ipynb] [--json]
    pyrepl3 gc [--session S] [--dry-run] [--json]
    pyrepl3 stats [--session S] [--json]
    pyrepl3 settings [--json]
    pyrepl3 worker --group NAME [--concurrency N] [--name NAME] [--lease S] [--grace S]

Reads go straight to the store (safe while kernels are running on it).
The engine is chosen as for the kernel: ``--store`` or ``PYREPL3_STORE``
(a directory, ``postgresql://...`` or ``http(s)://...``); for the embedded
store, ``--home`` or ``PYREPL3_HOME`` is where it lives. Credentials in a DSN
or URL are never printed.

This module is the parsing and the dispatch only: what each subcommand does is
in :mod:`kernel.cli.commands`, how it is drawn in :mod:`kernel.cli.render`.
def _add_settings(sub: Subparsers) -> None:
    p = sub.add_parser("settings", help="list every setting: value in force, source, default, what it does")
    _json_flag(p)
    p.set_defaults(fn=commands.settings_table)


A subcommand is one ``_add_<name>`` function below, listed in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import TypeAlias

from kernel.cli import commands, gc, stats, worker
from kernel.cli.render import Output
from kernel.core.errors import PyRepl3Error
from kernel.core.settings import Settings

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (stable, for scripts)")


def _add_sessions(sub: Subparsers) -> None:
    p = sub.add_parser("sessions", help="list sessions with executions")
    _json_flag(p)
    p.set_defaults(fn=commands.sessions)


def _add_executions(sub: Subparsers) -> None:
    p = sub.add_parser("executions", help="list executions")
    p.add_argument("--session", help="only this session")
    _json_flag(p)
    p.set_defaults(fn=commands.executions)


def _add_show(sub: Subparsers) -> None:
    p = sub.add_parser("show", help="show one promise")
    p.add_argument("promise_id")
    _json_flag(p)
    p.set_defaults(fn=commands.show)


def _add_pending(sub: Subparsers) -> None:
    p = sub.add_parser("pending", help="list prompts waiting for an answer")
    p.add_argument("--session", help="only this session")
    _json_flag(p)
    p.set_defaults(fn=commands.pending)


def _add_answer(sub: Subparsers) -> None:
    p = sub.add_parser("answer", help="answer a waiting input() prompt")
    p.add_argument("promise_id")
    p.add_argument("value")
    p.set_defaults(fn=commands.answer)


def _add_run(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="execute a notebook headless; run again to resume after a crash")
    p.add_argument("notebook")
    p.add_argument("--output", help="where to write the executed notebook (default: the notebook itself)")
    p.add_argument("--timeout", type=float, default=None, help="seconds a single cell may run (default: no limit)")
    p.set_defaults(fn=commands.run)


def _add_export(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="fill a notebook's cells with the latest outputs the store holds for them")
    p.add_argument("notebook")
    p.add_argument("--session", help="the session to take outputs from (default: the one that ran these cells)")
    p.add_argument("--output", help="where to write the filled notebook (default: the notebook itself)")
    _json_flag(p)
    p.set_defaults(fn=commands.export)


def _add_approve_deny(sub: Subparsers) -> None:
    for name in ("approve", "deny"):
        p = sub.add_parser(name, help=f"{name} a waiting approval request")
        p.add_argument("promise_id")
        p.add_argument("--reason", default="")
        p.set_defaults(fn=commands.decide, command=name)


def _add_settings(sub: Subparsers) -> None:
    p = sub.add_parser("settings", help="list every setting: value in force, source, default, what it does")
    _json_flag(p)
    p.set_defaults(fn=commands.settings_table)


def _add_gc(sub: Subparsers) -> None:
    p = sub.add_parser("gc", help="delete checkpoints retention lets go and the blobs nothing names (see PYREPL3_KEEP_*)")
    p.add_argument("--session", help="collect this session's checkpoints only (blobs: always the whole store)")
    p.add_argument("--dry-run", action="store_true", help="show what would be freed; delete nothing")
    _json_flag(p)
    p.set_defaults(fn=gc.gc)


def _add_stats(sub: Subparsers) -> None:
    p = sub.add_parser("stats", help="executions, errors, checkpoints, prompt waits and rpc queue times, summarised")
    p.add_argument("--session", help="only this session")
    _json_flag(p)
    p.set_defaults(fn=stats.stats)


#: In the order ``pyrepl3 --help`` lists them.
SUBCOMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    _add_sessions,
    _add_executions,
    _add_show,
    _add_pending,
    _add_answer,
    _add_run,
    _add_export,
    _add_approve_deny,
    _add_gc,
    _add_stats,
    _add_settings,
    worker.add_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyrepl3", description="Inspect PyREPL3's durable store.")
    parser.add_argument("--home", help="embedded store root (default: PYREPL3_HOME or <jupyter data dir>/pyrepl3)")
    parser.add_argument(
        "--store",
        help="the engine, as PYREPL3_STORE (default): a directory for the embedded store, "
        "postgresql://... for Postgres (resonate-pg), http(s)://... for a Resonate server",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None, *, env: Mapping[str, str] | None = None, out: Output | None = None) -> int:
    """Run one ``pyrepl3`` command; returns its exit status (2 for a PyREPL3 error)."""
    args = build_parser().parse_args(argv)
    out = out or Output()
    given = {"store": args.store, "home": args.home}
    settings = Settings.load(env).with_values(**{k: v for k, v in given.items() if v})
    try:
        return args.fn(args, out, settings)
    except PyRepl3Error as exc:
        out.error(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
