"""The rows a benchmark reports, and how: the contract ``run_all.py`` reads. Not a product file.

Every ``benchmarks/bench_*.py`` that fills a row of issue 12's table:

* takes ``--small`` (the CI size) and ``--json``;
* measures, builds its rows with ``versus`` (PyREPL3 beside ipykernel, both
  measured in the same run) or ``alone`` (no ipykernel counterpart), and ends
  with ``Report(...).emit(json=args.json)``;
* runs ``main`` through ``guard(main, "bench_x")``: a ``BenchError`` is printed
  on stderr and exits 2 (a failure, never a missed target: figures are printed,
  never asserted).

Without ``--json`` the report is a table on stdout; with it, stdout is one JSON
document and nothing else (progress lines go to stderr, ``progress()``)::

    {"bench": "bench_frames", "small": false, "load_before": [1, 5, 15 min],
     "load_after": [...], "cpus": 2, "header": "20 DataFrames of 5 MB ...",
     "rows": [ROW, ...], "notes": ["..."]}

    ROW = {"row": "a cell changing one of 20 DataFrames",  # what was measured
           "key": "frames",            # the issue row it fills (ISSUE_ROWS), or null
           "unit": "ms",               # the unit of the figures below ("ms", "s", "MB", "x")
           "pyrepl3_ms": 12.1, "ipykernel_ms": 6.3,   # medians, in ``unit`` (null: not measured)
           "pyrepl3_p90": 14.0, "ipykernel_p90": 7.9,
           "pyrepl3_range": [10.2, 30.1], "ipykernel_range": [5.9, 12.0],   # min, max
           "n": 30,                    # samples per kernel
           "ratio": 1.92,              # pyrepl3 / ipykernel medians (null without ipykernel)
           "target": "<= ipykernel + 10 ms",
           "met": true,                # null: no target, or it cannot be judged
           "note": "pickled [df7] only"}

``key`` names one of ``ISSUE_ROWS`` (several rows may fill one key: a
sub-figure, or two benchmarks measuring it their own way); a row with
``key: null`` is an extra figure, listed after the table.
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Issue 12's table, in its order: key -> (figure, target as the issue states it).
ISSUE_ROWS: dict[str, tuple[str, str]] = {
    "trivial": ("trivial cell (`pass`) round trip, median / p90", "<= ipykernel + 1 ms median, + 2 ms p99"),
    "history": ("`1+1` after 5,520 real cells in the same session", "flat: as after 10 cells"),
    "vars10k": ("trivial cell with 10,000 variables in the namespace", "flat: as with 10 variables"),
    "neighbour500": ("small cell next to 500 MB of arrays", "<= ipykernel + 1.5 ms"),
    "frames": ("a cell changing one of 20 DataFrames (5 MB each)", "<= ipykernel + 10 ms"),
    "names2000": ("2,000 cells each adding one name", "last 100 within 10 % of first 100; store <= 20 MB; restart <= new session + 0.1 s"),
    "start5000": ("kernel start with 5,000 checkpoints in the session", "<= a new session's start + 0.1 s"),
    "restore500": ("restore of a 500 MB namespace after kill -9", "first reply <= ipykernel's start + 0.3 s"),
    "start2g": ("start to first reply with a 2 GB namespace", "<= ipykernel's start + 0.3 s"),
    "step": ("`durable.run` step, trivial fn", "<= 0.2 ms"),
    "ckpt1000": ("`durable.checkpoint` of one name, 1,000 versions", "O(1): last 100 within 10 % of first 100"),
    "postgres": ("trivial cell on Postgres", "<= 2x embedded"),
    "listing50": ("`pyrepl3 executions` on a store holding one 50 MB output", "<= 0.1 s"),
    "storage": ("storage after gc: a 100 MB array rewritten 50 times", "<= 2x the live data"),
}


class BenchError(RuntimeError):
    """Something failed (a kernel, a cell, a check): exit status 2, never a missed target."""


def p90(values: Sequence[float]) -> float:
    return quantile(values, 9, 10)


def quantile(values: Sequence[float], k: int, n: int) -> float:
    """The k-th of ``n``-quantiles (inclusive method); the only value if there is one."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=n, method="inclusive")[k - 1]


def load() -> list[float]:
    """The machine's load average (1, 5, 15 min): compare only figures of the same run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def load_text(avg: Sequence[float]) -> str:
    return f"{' '.join(f'{x:.2f}' for x in avg) or 'n/a'} (1/5/15 min, {os.cpu_count()} CPUs)"


def progress(text: str) -> None:
    """A progress line: stderr, so that ``--json`` keeps stdout to the report."""
    print(text, file=sys.stderr, flush=True)


@dataclass
class Row:
    row: str
    key: str | None
    pyrepl3_ms: float | None
    ipykernel_ms: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    unit: str = "ms"
    pyrepl3_p90: float | None = None
    ipykernel_p90: float | None = None
    pyrepl3_range: list[float] | None = None
    ipykernel_range: list[float] | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        if self.key is not None and self.key not in ISSUE_ROWS:
            raise ValueError(f"unknown issue row {self.key!r}: one of {', '.join(ISSUE_ROWS)}")


def _stats(values: Sequence[float]) -> tuple[float, float, list[float]]:
    return statistics.median(values), p90(values), [min(values), max(values)]


def versus(row: str, key: str | None, ipykernel: Sequence[float], pyrepl3: Sequence[float], *,
           plus: float | None = None, times: float | None = None, target: str = "",
           met: bool | None = None, note: str = "", unit: str = "ms") -> Row:
    """PyREPL3's samples beside ipykernel's (same run). ``plus``: target pyrepl3 <=
    ipykernel + plus (medians); ``times``: <= ipykernel x times; else ``target``/``met`` as given."""
    a, a90, arange = _stats(ipykernel)
    b, b90, brange = _stats(pyrepl3)
    if plus is not None:
        target, met = target or f"<= ipykernel + {plus:g} {unit}", b <= a + plus
    elif times is not None:
        target, met = target or f"<= {times:g}x ipykernel", b <= a * times
    return Row(row, key, b, a, b / a if a else None, target, met, note, unit, b90, a90, brange, arange,
               min(len(ipykernel), len(pyrepl3)))


def alone(row: str, key: str | None, pyrepl3: Sequence[float], *, at_most: float | None = None,
          target: str = "", met: bool | None = None, note: str = "", unit: str = "ms") -> Row:
    """PyREPL3's samples without an ipykernel counterpart; ``at_most``: target median <= it."""
    b, b90, brange = _stats(pyrepl3)
    if at_most is not None:
        target, met = target or f"<= {at_most:g} {unit}", b <= at_most
    return Row(row, key, b, target=target, met=met, note=note, unit=unit, pyrepl3_p90=b90, pyrepl3_range=brange,
               n=len(pyrepl3))


def verdict(met: bool | None) -> str:
    return {True: "met", False: "missed", None: "-"}[met]


def figure(median: float | None, p90_: float | None, span: list[float] | None, unit: str) -> str:
    """``median / p90 [min-max] unit``, with as many decimals as the size calls for."""
    if median is None:
        return "-"

    def f(x: float) -> str:
        return f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"

    text = f(median)
    if p90_ is not None and span is not None and span[0] != span[1]:
        text += f" / {f(p90_)} [{f(span[0])}-{f(span[1])}]"
    return f"{text} {unit}"


def ratio_text(r: Row) -> str:
    if r.ratio is None or r.ipykernel_ms is None or r.pyrepl3_ms is None:
        return "-"
    return f"{r.ratio:.2f}x ({r.pyrepl3_ms - r.ipykernel_ms:+.2f} {r.unit})"


@dataclass
class Report:
    bench: str
    small: bool
    header: str
    load_before: list[float]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_after: list[float] = field(default_factory=load)

    def document(self) -> dict[str, Any]:
        return {"bench": self.bench, "small": self.small, "header": self.header, "cpus": os.cpu_count(),
                "load_before": self.load_before, "load_after": self.load_after,
                "rows": [asdict(r) for r in self.rows], "notes": self.notes}

    def emit(self, *, json_out: bool) -> int:
        if json_out:
            print(json.dumps(self.document()))
            return 0
        print(f"{self.bench}: {'small' if self.small else 'full'}: {self.header}")
        print(f"load before: {load_text(self.load_before)}")
        print(table(self.rows))
        for note in self.notes:
            print(note)
        print(f"load after:  {load_text(self.load_after)}")
        return 0


def figures(r: Row) -> list[str]:
    """The ipykernel, PyREPL3, ratio, target and met cells of a row."""
    return [figure(r.ipykernel_ms, r.ipykernel_p90, r.ipykernel_range, r.unit),
            figure(r.pyrepl3_ms, r.pyrepl3_p90, r.pyrepl3_range, r.unit), ratio_text(r), r.target or "-", verdict(r.met)]


def markdown(head: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    cells = [head, ["---"] * len(head), *lines]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells)


def table(rows: Sequence[Row]) -> str:
    """A Markdown table of ``rows``: figure, ipykernel, PyREPL3 (median / p90 [min-max]), ratio, target, met, note."""
    return markdown(["figure", "ipykernel", "PyREPL3", "ratio", "target", "met", "note"],
                    [[r.row, *figures(r), r.note] for r in rows])


def compiled_package(package: Path = Path(__file__).resolve().parent.parent / "kernel") -> None:
    """Bring the kernel package's bytecode up to date, as ``install.py`` leaves it.

    ipykernel's bytecode was written when pip installed it. PyREPL3's is written by
    ``install.py``; a source file edited since (on a machine with
    PYTHONDONTWRITEBYTECODE, where no import rewrites it) is compiled again at every
    kernel start: about 400 ms of a start to first reply that no install has."""
    if not compileall.compile_dir(str(package), quiet=1):
        raise BenchError(f"compileall failed for {package}")


def guard(main: Callable[[], int], name: str) -> None:
    """Run a benchmark's ``main`` and exit with its status; a BenchError exits 2, saying why
    on stderr. The kernel package's bytecode is brought up to date first (:func:`compiled_package`)."""
    try:
        compiled_package()
        sys.exit(main())
    except BenchError as exc:
        print(f"{name} failed: {exc}", file=sys.stderr)
        sys.exit(2)
