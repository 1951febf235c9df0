"""The ``%durable`` line magic: what the durable side of this kernel knows.

``%durable``             session id, store, counts, and a table of this session's executions
``%durable executions``  only the table
``%durable pending``     prompts of this session waiting for an answer
``%durable resume``      re-run executions a crashed kernel left unfinished
``%durable checkpoints`` the namespace checkpoints of this session
``%durable restore N``   bring back the namespace as it was after execution N
``%durable exclude NAME`` keep NAME out of checkpoints
``%durable limit SIZE``  skip values larger than SIZE (e.g. 200MB; 0 = no limit)
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.display import display

from kernel.core.errors import PyRepl3Error
from kernel.durable.session import DurableSession

if TYPE_CHECKING:
    from kernel.core.models import ExecutionSummary
    from kernel.checkpoint.history import StoredCheckpoint


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
        return _text_table(self.HEAD, self._cells())

    def _repr_html_(self) -> str:
        return _html_table(self.HEAD, self._cells(), "pyrepl3-executions")


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def parse_size(text: str) -> int | None:
    """``200MB``, ``1.5GB``, ``4096`` -> bytes; 0 means no limit."""
    t = text.strip().upper().removesuffix("B")
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in ("K", "M", "G") else t
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise UsageError(f"%durable limit: {text!r} is not a size such as 200MB") from None
    return value or None


class CheckpointTable:
    HEAD = ["#", "saved", "size", "changed", "removed", "skipped", "promise"]

    def __init__(self, rows: list[StoredCheckpoint]) -> None:
        self.rows = rows

    def _cells(self) -> list[list[str]]:
        return [
            [
                str(r.execution_count if r.execution_count is not None else ""),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at)),
                _size(r.size),
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


@magics_class
class DurableMagics(Magics):
    def __init__(self, shell: Any, session: Callable[[], DurableSession | None]) -> None:
        super().__init__(shell)
        self.session = session

    @line_magic
    def durable(self, line: str) -> Any:
        """The durable session: ``%durable [executions|pending|resume|checkpoints|restore N|exclude NAME|limit SIZE]``."""
        ds = self.session()
        words = line.split()
        command = words[0] if words else ""
        if ds is None:
            print("PyREPL3: durability is off in this kernel; see the message printed at start.")
            return None
        catalog = ds.catalog()
        try:
            return self._dispatch(ds, catalog, command, words)
        except PyRepl3Error as exc:
            print(f"%durable {command}: {exc}")
            return None
        finally:
            catalog.close()

    def _dispatch(self, ds: Any, catalog: Any, command: str, words: list[str]) -> Any:
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
        if command == "checkpoints":
            display(CheckpointTable(ds.checkpoints()))
            return None
        if command == "restore":
            if len(words) != 2 or not words[1].isdigit():
                print("usage: %durable restore N   (N = an execution count from %durable checkpoints)")
                return None
            checkpoint, report = ds.restore(int(words[1]))
            print(f"namespace of execution {checkpoint.execution_count} is back: {report.summary()}")
            return None
        if command == "exclude":
            shown = ds.exclude(words[1:])
            print("not checkpointed: " + (", ".join(shown) if shown else "(nothing)"))
            return None
        if command == "limit":
            if len(words) == 2:
                ds.value_size_limit = parse_size(words[1])
            limit = ds.value_size_limit
            print("checkpoint size limit per value: " + (_size(limit) if limit else "none"))
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
        print(f"%durable: unknown subcommand {command!r}; see %durable? for the subcommands")
        return None


__all__ = ["DurableMagics", "ExecutionTable"]
