"""Kernel start benchmark: PyREPL3 against plain ipykernel, measured in one run.

    .venv/bin/python benchmarks/bench_start.py                 # 10 repeats, a 500 MB namespace to restore
    .venv/bin/python benchmarks/bench_start.py --repeats 20
    .venv/bin/python benchmarks/bench_start.py --small         # CI: 2 repeats, 4 x 256 KB arrays

Two scenarios, each kernel started by jupyter_client (``KernelManager`` with the
venv's stock ``python3`` kernelspec, ``python -m ipykernel_launcher``, and the
``pyrepl3`` kernelspec), the two interleaved and alternating which goes first,
``--repeats`` starts of each:

* **empty store**: every PyREPL3 start gets a fresh PYREPL3_HOME. Timed: from
  ``start_kernel`` to ``wait_for_ready`` returning (the first kernel_info_reply
  received), and on to the execute_reply of a first trivial cell.
* **checkpoint to restore**: a first PyREPL3 kernel creates four float64
  arrays (``--mb`` MB in all; 500 by default), its namespace is checkpointed
  after the cell, and it is killed with SIGKILL. Each timed PyREPL3 start then
  continues that session: start to ready (kernel_info answered while the
  namespace is restored in the background) and start to the execute_reply of
  the first cell (which waits for the restore); an untimed cell then checks
  every restored value. The restore time is the one the kernel reports
  ("... in X s", in the cell's notices or the kernel log).

Targets, printed and not asserted: ready <= 1.15x ipykernel on an empty store;
with the namespace to restore, the first execute_reply <= ipykernel's (start +
first cell) + 0.3 s (issue 12's bound for a 2 GB namespace).

The machine's load (``os.getloadavg``) is printed before and after: on a shared
machine, compare only figures of the same run. ``--json``: the rows as JSON
(benchmarks/_report.py). Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import Report, alone, guard, load_text, versus  # noqa: E402
from _report import load as load_avg  # noqa: E402
from bench_core import BenchError, Kernels, p90, run_cell  # noqa: E402

IPYKERNEL = "python3"
PYREPL3 = "pyrepl3"
SESSION = "bench-start"
TARGET_RATIO = 1.15
RESTORE_PLUS_MS = 300.0

MAKE = "import numpy as np\narrays = [np.full({n}, float(k)) for k in range(4)]\na0, a1, a2, a3 = arrays\nmarker = 'restored'"
CHECK = (
    "assert marker == 'restored' and arrays[0] is a0 and len(arrays) == 4\n"
    "assert all(a.shape == ({n},) and float(a[-1]) == float(k) for k, a in enumerate(arrays))\n"
    "print('values ok')"
)
RESTORED = re.compile(r"restored \d+ names.*? in ([0-9.]+)s")


@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds * 1000)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self) -> str:
        v = self.values
        return f"{self.median:6.0f} ms  p90 {p90(v):5.0f}  [{min(v):.0f}-{max(v):.0f}]"


def load() -> str:
    return load_text(load_avg())


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Start:
    km: Any
    kc: Any
    ready: float  # s from start_kernel to the first kernel_info_reply
    cpu: float  # CPU s the kernel process used until then
    first: float  # s from start_kernel to the first cell's execute_reply (and idle)
    notes: list[str]  # that cell's stderr


def timed_start(kernels: Kernels, name: str, env: dict[str, str], first_cell: str = "pass") -> Start:
    t0 = time.perf_counter()
    km, kc, ready = kernels.start(name, env)
    cpu = cpu_seconds(km.provisioner.process.pid)
    notes: list[str] = []
    run_cell(kc, first_cell, timeout=600, stderr=notes)
    return Start(km, kc, ready, cpu, time.perf_counter() - t0, notes)


def interleaved(repeats: int, one: Callable[[str, int], None]) -> None:
    """``one(kind, i)`` for ipykernel and PyREPL3 alternately, alternating which goes first."""
    for i in range(repeats):
        order = (IPYKERNEL, PYREPL3) if i % 2 == 0 else (PYREPL3, IPYKERNEL)
        for kind in order:
            one(kind, i)


def reported_restore(notes: list[str], log: Path) -> float:
    """The restore time the kernel reported: in the cell's notices, or in its log."""
    text = "".join(notes) + (log.read_text(errors="replace") if log.exists() else "")
    found = RESTORED.findall(text)
    if not found:
        raise BenchError(f"the kernel did not report a restore: {text[-2000:]!r}")
    return float(found[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="starts of each kernel per scenario (default 10; 2 with --small)")
    parser.add_argument("--mb", type=float, default=None, help="namespace size to restore, MB (default 500; 1 with --small)")
    parser.add_argument("--small", action="store_true", help="CI size: 2 repeats, a 1 MB namespace")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/_report.py)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.small else 10)
    mb = args.mb or (1.0 if args.small else 500.0)
    n = max(int(mb * 2**20 / 8 / 4), 1)  # float64 elements per array

    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-start-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython"), "PYREPL3_SESSION": SESSION, "PYREPL3_DEBUG": "1"}, work)
    load_before = load_avg()
    ready = {IPYKERNEL: Series(), PYREPL3: Series()}
    cpu = {IPYKERNEL: Series(), PYREPL3: Series()}
    first = {IPYKERNEL: Series(), PYREPL3: Series()}
    ready_r = {IPYKERNEL: Series(), PYREPL3: Series()}
    first_r = {IPYKERNEL: Series(), PYREPL3: Series()}
    restore = Series()
    try:
        # Untimed: one start of each, so that both find the files in the page cache.
        for kind in (IPYKERNEL, PYREPL3):
            kernels.stop(kernels.start(kind, {"PYREPL3_HOME": str(work / "warm")})[0])

        def empty(kind: str, i: int) -> None:
            s = timed_start(kernels, kind, {"PYREPL3_HOME": str(work / f"empty-{i}")})
            ready[kind].add(s.ready)
            cpu[kind].add(s.cpu)
            first[kind].add(s.first)
            kernels.stop(s.km)

        interleaved(repeats, empty)

        home = work / "restore"
        env = {"PYREPL3_HOME": str(home)}
        km, kc, _ = kernels.start(PYREPL3, env)
        run_cell(kc, MAKE.format(n=n), timeout=1200)
        pid = km.provisioner.process.pid
        os.kill(pid, 9)
        km.provisioner.process.wait(timeout=30)
        kernels.stop(km)

        def with_checkpoint(kind: str, i: int) -> None:
            s = timed_start(kernels, kind, env if kind == PYREPL3 else {})
            ready_r[kind].add(s.ready)
            first_r[kind].add(s.first)
            if kind == PYREPL3:
                restore.add(reported_restore(s.notes, kernels.logs[-1]))
                run_cell(s.kc, CHECK.format(n=n), timeout=600)  # raises unless every value is back
            kernels.stop(s.km)

        interleaved(repeats, with_checkpoint)
    finally:
        kernels.stop_all()
    shutil.rmtree(work, ignore_errors=True)

    def both(series: dict[str, Series]) -> tuple[list[float], list[float]]:
        return series[IPYKERNEL].values, series[PYREPL3].values

    mb_text = f"{4 * n * 8 / 2**20:.0f} MB" if mb >= 10 else f"{4 * n * 8 / 2**20:.1f} MB"
    rows = [
        versus("empty store: ready (kernel_info_reply)", None, *both(ready), times=TARGET_RATIO),
        versus("empty store: kernel CPU time until ready", None, *both(cpu)),
        versus("empty store: first execute_reply", None, *both(first)),
        versus("with checkpoint: ready (kernel_info_reply)", None, *both(ready_r), times=TARGET_RATIO),
        alone(f"with checkpoint: restore of {mb_text} (kernel-reported)", None, restore.values),
        versus(f"with checkpoint: first execute_reply, {mb_text} restored after kill -9", "restore500",
               *both(first_r), plus=RESTORE_PLUS_MS,
               note="ipykernel: start + first cell, nothing to restore"),
    ]
    header = (f"{repeats} starts of each kernel per scenario (start_kernel -> ...), namespace to restore "
              f"{4 * n * 8 / 2**20:.1f} MB (4 float64 arrays)")
    return Report("bench_start", args.small, header, load_before, rows).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_start")
