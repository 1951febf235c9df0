"""How the ``pyrepl3`` command draws: tables, JSON, messages and the run's progress bar.

Tables and the progress bar come from ``rich``. On a terminal they are styled
(a header rule, a live bar); otherwise they are plain text that stays easy to
grep and to read in a log: tables are aligned columns under a header line,
never wrapped or cut, and the progress is one line per finished cell. JSON is
written exactly as ``json.dumps(..., indent=2)`` gives it, colourless, so
scripts can parse it. Only the CLI imports this module (``rich`` is kept off
the kernel's path).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.cells import cell_len
from rich.table import Table

#: Wide enough that a plain table never wraps; rich only uses the width it needs.
_PLAIN_WIDTH = 1_000_000
#: How narrow a free-text column (code, prompt) may get on a terminal.
_FOLD_MIN = 12


def _console(stream: TextIO, **kw: Any) -> Console:
    # Values are data, not rich markup: "[red]" or ":smile:" in a cell prints as typed.
    return Console(file=stream, markup=False, highlight=False, emoji=False, **kw)


class Column:
    """A table column; ``fold`` marks free text (code, a prompt) that may be cut on a narrow terminal."""

    def __init__(self, header: str, *, fold: bool = False) -> None:
        self.header, self.fold = header, fold


class Output:
    """Where a command writes: ``stdout`` for results, ``stderr`` for complaints."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def line(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def json(self, value: Any, **dumps: Any) -> None:
        self.line(json.dumps(value, indent=2, **dumps))

    def error(self, text: str) -> None:
        self.stderr.write(f"pyrepl3: {text}\n")

    def table(self, columns: Sequence[Column | str], rows: Sequence[Sequence[str]]) -> None:
        cols = [c if isinstance(c, Column) else Column(c) for c in columns]
        console = _console(self.stdout)
        if console.is_terminal:
            self._styled_table(console, cols, rows)
            return
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="", padding=(0, 1))
        for col in cols:
            table.add_column(col.header, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console = _console(self.stdout, width=_PLAIN_WIDTH, color_system=None)
        with console.capture() as captured:
            console.print(table)
        for text in captured.get().splitlines():
            self.line(text.rstrip())

    @staticmethod
    def _styled_table(console: Console, cols: list[Column], rows: Sequence[Sequence[str]]) -> None:
        """A header rule; on a narrow terminal free-text columns are cut (with an
        ellipsis) down to ``_FOLD_MIN``, and ids are never cut (they are copied
        into the next command): if they still do not fit, the table is as wide
        as it must be and the terminal wraps it."""
        content = [max(cell_len(c) for c in (col.header, *(r[i] for r in rows))) for i, col in enumerate(cols)]
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for col in cols:
            table.add_column(col.header, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        natural = Measurement.get(console, console.options.update_width(_PLAIN_WIDTH), table).maximum
        if natural > console.width:
            for col, column in zip(cols, table.columns, strict=True):
                if col.fold:
                    column.overflow, column.ratio, column.min_width = "ellipsis", 1, _FOLD_MIN
            table.expand = True
            needed = natural - sum(max(0, w - _FOLD_MIN) for col, w in zip(cols, content, strict=True) if col.fold)
            if needed > console.width:
                console = _console(console.file, width=needed)
        console.print(table)


class RunProgress:
    """The progress of ``pyrepl3 run`` on ``stream`` (stderr).

    A rich progress bar when the stream is a terminal; otherwise one line per
    finished cell (``3/6 cells (1.2s) cell 3: ok``), which reads well in a log.
    Nothing is drawn before :meth:`start`.
    """

    def __init__(self, total: int, stream: TextIO | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self._monotonic = monotonic
        self._started = monotonic()
        self._bar: Progress | None = None
        self._task: Any = None

    def start(self) -> None:
        self._started = self._monotonic()
        console = _console(self.stream)
        if not console.is_terminal:
            return
        self._bar = Progress(
            BarColumn(),
            TextColumn("{task.completed}/{task.total} cells"),
            TimeElapsedColumn(),
            TextColumn("{task.description}", markup=False),
            console=console,
        )
        self._task = self._bar.add_task("starting the kernel", total=self.total)
        self._bar.start()

    def update(self, index: int, label: str) -> None:
        self.done += 1
        what = f"cell {index + 1}: {label}"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=what)
            return
        self.stream.write(f"{self.done}/{self.total} cells ({self._monotonic() - self._started:.1f}s) {what}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


__all__ = ["Column", "Output", "RunProgress"]
