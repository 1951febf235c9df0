"""The ``%durable`` line magic: what the durable side of this kernel knows.

``%durable``             session id, store, counts, and a table of this session's executions
``%durable executions``  only the table
``%durable pending``     prompts of this session waiting for an answer
``%durable resume``      re-run executions a crashed kernel left unfinished
``%durable checkpoints`` the namespace checkpoints of this session
``%durable restore N``   bring back the namespace as it was after execution N
``%durable keep N``      pin the checkpoint after execution N (garbage collection keeps it)
``%durable exclude NAME`` keep NAME out of checkpoints
``%durable limit SIZE``  skip values larger than SIZE (e.g. 200MB; 0 = no limit)

Arguments are parsed by IPython's ``magic_arguments`` (one parser for the
subcommand, one per subcommand for its arguments), so a wrong one is a
``UsageError`` that says what is wrong and how the subcommand is used, shown in
the cell without a traceback. The tables render as HTML in a notebook and as
aligned text in a console; this module stays stdlib and IPython only (it is
loaded by every kernel).
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from kernel.core.clock import to_ms
from kernel.core.errors import PyRepl3Error
from kernel.core.text import first_line, human_size, local_time, parse_size
from kernel.durable.session import DurableSession
from kernel.store.large_outputs import resolve
from kernel.store.records import latest_outputs

if TYPE_CHECKING:
    from kernel.checkpoint.history import StoredCheckpoint
    from kernel.core.models import ExecutionSummary


class ExecutionTable:
    """Renders as HTML in a notebook and as aligned text in a console."""

    def __init__(self, rows: list[ExecutionSummary]) -> None:
        self.rows = rows

    def _cells(self) -> list[list[str]]:
        return [
            [str(r.execution_count or ""), r.state + (f" ({r.ename})" if r.ename else ""), local_time(r.created_at, missing=""), r.id, first_line(r.code)]
            for r in self.rows
        ]

    HEAD = ["#", "state", "started", "promise", "code"]

    def __repr__(self) -> str:
        return _text_table(self.HEAD, self._cells())

    def _repr_html_(self) -> str:
        return _html_table(self.HEAD, self._cells(), "pyrepl3-executions")


class CheckpointTable:
    HEAD = ["#", "saved", "size", "changed", "removed", "skipped", "promise"]

    def __init__(self, rows: list[StoredCheckpoint]) -> None:
        self.rows = rows

    def _cells(self) -> list[list[str]]:
        return [
            [
                str(r.execution_count if r.execution_count is not None else ""),
                local_time(to_ms(r.created_at)),
                human_size(r.size),
                ", ".join(r.changed)[:60],
                ", ".join(r.removed)[:40],
                ", ".join(r.skipped)[:40],
                r.id,
            ]
            for r in self.rows
        ]

    def __repr__(self) -> str:
        return _text_table(self.HEAD, self._cells())

    def _repr_html_(self) -> str:
        return _html_table(self.HEAD, self._cells(), "pyrepl3-checkpoints")


def _text_table(head: list[str], cells: list[list[str]]) -> str:
    rows = [head, *cells]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _html_table(head: list[str], cells: list[list[str]], css: str) -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
    return f"<table class='{css}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _execution_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not an execution count")
    return int(text)


# The arguments of each subcommand, parsed by IPython's magic_arguments; the
# stubs only carry the parsers (and the help ``%durable?`` shows).


@magic_arguments(name="durable restore")
@argument("n", metavar="N", type=_execution_count, help="an execution count from %%durable checkpoints")
def _restore_args() -> None:
    """Bring back the namespace as it was after execution N."""


@magic_arguments(name="durable keep")
@argument("n", metavar="N", nargs="?", type=_execution_count, help="an execution count from %%durable checkpoints")
@argument("--unpin", action="store_true", help="let retention decide about N again")
def _keep_args() -> None:
    """Pin the checkpoint after execution N so garbage collection keeps it; without N, list the pins."""


@magic_arguments(name="durable outputs")
@argument("n", metavar="N", nargs="?", type=_execution_count, help="an execution count (default: the latest with outputs)")
@argument("--cell", metavar="ID", help="the latest execution of the notebook cell with this id")
def _outputs_args() -> None:
    """Show again the stored outputs of an execution (one a closed page or a dead kernel did not show)."""


@magic_arguments(name="durable exclude")
@argument("names", metavar="NAME", nargs="*", help="names to keep out of checkpoints")
def _exclude_args() -> None:
    """Keep NAME out of checkpoints; without NAME, list what is kept out."""


@magic_arguments(name="durable limit")
@argument("size", metavar="SIZE", nargs="?", help="such as 200MB, 1.5GB or 4096; 0 = no limit")
def _limit_args() -> None:
    """Skip values larger than SIZE; without SIZE, show the limit."""


def _no_args(command: str) -> Any:
    @magic_arguments(name=f"durable {command}")
    def takes_no_arguments() -> None:
        """No arguments."""

    return takes_no_arguments


#: Every subcommand, with the parser of its arguments ("status" is the default).
SUBCOMMANDS: dict[str, Any] = {
    "status": _no_args("status"),
    "executions": _no_args("executions"),
    "pending": _no_args("pending"),
    "resume": _no_args("resume"),
    "checkpoints": _no_args("checkpoints"),
    "restore": _restore_args,
    "keep": _keep_args,
    "exclude": _exclude_args,
    "limit": _limit_args,
    "outputs": _outputs_args,
}


def _usage(parser: argparse.ArgumentParser) -> str:
    """``usage: %durable restore N`` (magic_arguments spells it ``::\\n\\n  %durable restore N`` for docstrings)."""
    return "usage: " + parser.format_usage().strip().removeprefix("::").strip()


@magics_class
class DurableMagics(Magics):
    def __init__(
        self,
        shell: Any,
        session: Callable[[], DurableSession | None],
        show: Callable[[list[dict[str, Any]]], None],
        notices: Callable[[], list[str]] = list,
    ) -> None:
        super().__init__(shell)
        self.session = session
        #: Publishes stored nbformat outputs in the running cell (the kernel's iopub).
        self.show = show
        #: The kernel's latest notices, one line each: the informational ones are nowhere else in a notebook.
        self.notices = notices

    @magic_arguments()
    @argument("subcommand", metavar="SUBCOMMAND", nargs="?", default="status", choices=list(SUBCOMMANDS),
              help="one of: " + ", ".join(SUBCOMMANDS) + " (default: status)")
    @argument("operands", metavar="ARGS", nargs=argparse.REMAINDER, help="the arguments of SUBCOMMAND")
    @line_magic
    def durable(self, line: str) -> Any:
        """The durable session of this kernel.

        %durable [SUBCOMMAND [ARGS]]

        (nothing)         session id, store, counts, PyREPL3's latest notices (what was
                          restored or skipped), and a table of this session's executions
        executions        only the table
        pending           prompts of this session waiting for an answer
        resume            re-run executions a crashed kernel left unfinished
        checkpoints       the namespace checkpoints of this session
        restore N         bring back the namespace as it was after execution N
        keep [N]          pin the checkpoint after execution N (garbage collection keeps
                          it); --unpin N: let retention decide again; no N: list the pins
        exclude NAME...   keep NAME out of checkpoints
        limit SIZE        skip values larger than SIZE (e.g. 200MB; 0 = no limit)
        outputs [N]       show again the stored outputs of execution N (default: the latest
                          with outputs); --cell ID: of the latest run of that notebook cell

        A wrong subcommand or argument is a UsageError (no traceback).
        """
        ds = self.session()
        if ds is None:
            print("PyREPL3: durability is off in this kernel; see the message printed at start.")
            self._print_notices()
            return None
        command, args = self._parse(line)
        catalog = ds.catalog()
        try:
            return self._dispatch(ds, catalog, command, args)
        except PyRepl3Error as exc:
            print(f"%durable {command}: {exc}")
            return None
        finally:
            catalog.close()

    def _print_notices(self) -> None:
        """What PyREPL3 said (restores, skipped names, ...; ``!`` marks a broken promise)."""
        lines = self.notices()
        print("notices: " + (f"{len(lines)} latest, oldest first (also in the kernel log)" if lines else "none"))
        for line in lines:
            print(line)

    def _parse(self, line: str) -> tuple[str, argparse.Namespace]:
        """``restore 3`` -> ``("restore", Namespace(n=3))``; a ``UsageError`` that says what is wrong otherwise."""
        try:
            top = parse_argstring(self.durable, line)
        except UsageError as exc:
            raise UsageError(f"%durable: {exc}") from None
        spec = SUBCOMMANDS[top.subcommand]
        try:
            return top.subcommand, spec.parser.parse_args(top.operands)
        except UsageError as exc:
            raise UsageError(f"%durable {top.subcommand}: {exc}\n{_usage(spec.parser)}") from None

    def _dispatch(self, ds: Any, catalog: Any, command: str, args: argparse.Namespace) -> Any:
        if command == "status":
            counts = catalog.count(ds.session)
            total = sum(counts.values())
            summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet"
            print(f"session: {ds.session}\nstore:   {ds.store_path}\nexecutions: {total} ({summary})")
            self._print_notices()
            display(ExecutionTable(catalog.executions(ds.session, limit=50)))
            return None
        if command == "executions":
            display(ExecutionTable(catalog.executions(ds.session)))
            return None
        if command == "checkpoints":
            display(CheckpointTable(ds.checkpoints()))
            return None
        if command == "restore":
            checkpoint, report = ds.restore(args.n)
            print(f"namespace of execution {checkpoint.execution_count} is back: {report.summary()}")
            return None
        if command == "keep":
            return self._keep(ds, args)
        if command == "exclude":
            shown = ds.exclude(args.names)
            print("not checkpointed: " + (", ".join(shown) if shown else "(nothing)"))
            return None
        if command == "limit":
            if args.size is not None:
                ds.value_size_limit = _size_limit(args.size)
            limit = ds.value_size_limit
            print("checkpoint size limit per value: " + (human_size(limit) if limit else "none"))
            return None
        if command == "outputs":
            found = latest_outputs(catalog, ds.session, args.n, args.cell, skip=ds.current_execution)
            if found is None:
                what = f"execution {args.n}" if args.n is not None else f"cell {args.cell}" if args.cell else "any execution"
                print(f"no stored outputs for {what} of this session (see %durable executions)")
                return None
            self.show(resolve(found, ds.history.checkpointer.blobs))
            return None
        if command == "resume":
            lines = ds.resume_interrupted()
            print("\n".join(lines) if lines else "nothing to resume: no execution of this session was interrupted")
            return None
        if command == "pending":
            waiting = catalog.pending(ds.session, kind="input")
            if not waiting:
                print("no prompts are waiting")
            for r in waiting:
                param = r["param"] if isinstance(r["param"], dict) else {}
                print(f"{r['id']}  {param.get('kind', '')}  {param.get('prompt', '')!r}")
            return None
        raise AssertionError(f"%durable {command}: in SUBCOMMANDS but not dispatched")


    @staticmethod
    def _keep(ds: Any, args: argparse.Namespace) -> None:
        if ds.reclaim is None:
            print("garbage collection is not available in this session")
        elif args.n is None:
            pins = ds.reclaim.pins()
            print("pinned: " + (", ".join(f"execution {count} ({seq})" for count, seq in pins) if pins else "(nothing)"))
        else:
            print(ds.reclaim.unkeep(args.n) if args.unpin else ds.reclaim.keep(args.n))


def _size_limit(text: str) -> int | None:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"%durable limit: {exc}") from None


__all__ = ["SUBCOMMANDS", "DurableMagics", "ExecutionTable"]
