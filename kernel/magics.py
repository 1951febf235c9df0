"""The ``%durable`` line magic: what the durable side of this kernel knows.

``%durable``             session id, store, counts, and a table of this session's executions
``%durable executions``  only the table
``%durable pending``     prompts of this session waiting for an answer
``%durable resume``      re-run executions a crashed kernel left unfinished
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import display

if TYPE_CHECKING:
    from kernel.kernel import DurableKernel
    from kernel.models import ExecutionSummary


def _when(ms: int | None) -> str:
    return "" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _first_line(code: str, width: int = 50) -> str:
    line = code.strip().splitlines()[0] if code.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


class ExecutionTable:
    """Renders as HTML in a notebook and as aligned text in a console."""

    def __init__(self, rows: list[ExecutionSummary]) -> None:
        self.rows = rows

    def _cells(self) -> list[list[str]]:
        return [
            [str(r.execution_count or ""), r.state + (f" ({r.ename})" if r.ename else ""), _when(r.created_at), r.id, _first_line(r.code)]
            for r in self.rows
        ]

    HEAD = ["#", "state", "started", "promise", "code"]

    def __repr__(self) -> str:
        rows = [self.HEAD, *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEAD))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self.HEAD)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self._cells())
        return f"<table class='pyrepl3-executions'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@magics_class
class DurableMagics(Magics):
    def __init__(self, shell: Any, kernel: DurableKernel) -> None:
        super().__init__(shell)
        self.kernel = kernel

    @line_magic
    def durable(self, line: str) -> Any:
        """Show the durable session: ``%durable [executions]``."""
        ds = self.kernel.durable
        words = line.split()
        command = words[0] if words else ""
        if ds is None:
            print("PyREPL3: durability is off in this kernel; see the message printed at start.")
            return None
        catalog = ds.catalog()
        try:
            if command in ("", "status"):
                counts = catalog.count(ds.session)
                total = sum(counts.values())
                summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet"
                print(f"session: {ds.session}\nstore:   {ds.store_path}\nexecutions: {total} ({summary})")
                display(ExecutionTable(catalog.executions(ds.session, limit=50)))
                return None
            if command == "executions":
                display(ExecutionTable(catalog.executions(ds.session)))
                return None
            if command == "resume":
                lines = self.kernel.resume_interrupted()
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
        finally:
            catalog.close()
        print(f"%durable: unknown subcommand {command!r}; try %durable, %durable executions, %durable pending or %durable resume")
        return None


__all__ = ["DurableMagics", "ExecutionTable"]
