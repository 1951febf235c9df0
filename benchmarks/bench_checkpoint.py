"""Namespace checkpoint benchmark: PyREPL3 against plain ipykernel, interleaved in one run.

    .venv/bin/python benchmarks/bench_checkpoint.py            # full size: 4 x 125 MB arrays + 10,000 objects, 3 rounds
    .venv/bin/python benchmarks/bench_checkpoint.py --small    # CI size: 4 x 2 MB arrays + 1,000 objects, 2 rounds

The workload (issue 4), ``--repeats`` rounds, each on a fresh PYREPL3_HOME: an
ipykernel and a PyREPL3 kernel are started side by side (alternating which goes
first); cell 1 creates four float64 arrays and instances of a notebook-defined
class in each; then 20 small cells ``counter += 1; small_list.append(counter)``,
the two kernels taking turns cell by cell. The PyREPL3 kernel is killed with
SIGKILL, a fresh kernel on the same session restores the namespace, and a cell
checks every value. Figures (median / p90 / spread over the rounds, over every
small cell): cell 1's round trip (checkpointing it is the difference to
ipykernel), the small-cell round trip next to the data, the restore time as the
kernel reports it, start-to-ready (with restore) against ipykernel's start,
bytes on disk against the data, and the kernel's peak RSS (VmHWM) against
ipykernel's after the same cells. ``--json``: the rows as JSON
(benchmarks/_report.py). Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import Report, alone, guard, load, versus  # noqa: E402
from bench_core import IPYKERNEL, PYREPL3, BenchError, Kernels, run_cell  # noqa: E402

SESSION = "bench-checkpoint"
NEIGHBOUR_PLUS_MS = 1.5

CELL1 = """
import numpy as np
class Particle:
    def __init__(self, i):
        self.i = i
        self.pos = (float(i), float(i) * 2.0)
        self.tag = f"p{{i}}"
arrays = [np.full({n}, float(k)) for k in range(4)]
a0, a1, a2, a3 = arrays
particles = [Particle(i) for i in range({objects})]
counter = 0
small_list = []
"""
SMALL = "counter += 1; small_list.append(counter)"
CHECK = """
assert counter == 20 and small_list == list(range(1, 21)), (counter, small_list[-3:])
assert all(float(a[{n} - 1]) == float(k) for k, a in enumerate(arrays)) and arrays[0] is a0
assert len(particles) == {objects} and particles[-1].tag == "p{last}" and type(particles[0]).__name__ == "Particle"
print("values ok")
"""


def vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def one_round(kernels: Kernels, home: Path, session: str, n: int, objects: int, flip: bool) -> dict[str, dict[str, list[float]]]:
    """One round of the workload in both kernels, interleaved; figures (ms, MB) by kernel."""
    env = {"PYREPL3_HOME": str(home), "PYREPL3_SESSION": session}
    order = (IPYKERNEL, PYREPL3)[:: -1 if flip else 1]
    out: dict[str, dict[str, list[float]]] = {k: {} for k in order}
    live = {}
    for kind in order:
        km, kc, start = kernels.start(kind, env)
        live[kind] = (km, kc)
        out[kind]["start"] = [start * 1000]
        run_cell(kc, "import numpy as np", timeout=120)  # untimed: both kernels pay numpy's import here
    for kind in order:
        out[kind]["cell1"] = [run_cell(live[kind][1], CELL1.format(n=n, objects=objects), timeout=600) * 1000]
    for kind in order:
        out[kind]["small"] = []
    for _ in range(20):
        for kind in order:
            out[kind]["small"].append(run_cell(live[kind][1], SMALL) * 1000)
    for kind in order:
        out[kind]["hwm"] = [vm_hwm_mb(live[kind][0].provisioner.process.pid)]
    kernels.stop(live[IPYKERNEL][0])
    km = live[PYREPL3][0]
    os.kill(km.provisioner.process.pid, signal.SIGKILL)
    km.provisioner.process.wait(timeout=30)
    kernels.stop(km)
    out[PYREPL3]["disk"] = [disk_bytes(home) / 1e6]

    km, kc, restart = kernels.start(PYREPL3, env)
    notes: list[str] = []
    run_cell(kc, CHECK.format(n=n, objects=objects, last=objects - 1), timeout=120, stderr=notes)
    # The restore report is an informational notice: in %durable, not in the cell's outputs.
    run_cell(kc, "%%capture status\n%durable")
    run_cell(kc, "import sys\nsys.stderr.write(status.stdout)", stderr=notes)
    found = re.search(r"restored \d+ names.* in ([0-9.]+)s", "".join(notes))
    if not found:
        raise BenchError(f"the restarted kernel did not report a restore: {''.join(notes)!r}")
    out[PYREPL3]["restore"] = [float(found.group(1)) * 1000]
    out[PYREPL3]["restart"] = [restart * 1000]
    kernels.stop(km)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CI size: 4 x 2 MB arrays, 1,000 objects, 2 rounds")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of the workload (default 3; 2 with --small)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/_report.py)")
    args = parser.parse_args(argv)
    n = 262_144 if args.small else 15_625_000  # float64 elements per array: 2 MB or 125 MB
    objects = 1_000 if args.small else 10_000
    repeats = args.repeats or (2 if args.small else 3)
    data_mb = 4 * n * 8 / 1e6  # MB as the issue counts them (4 x 125 MB)

    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-ckpt-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython")}, work)
    load_before = load()
    got: dict[str, dict[str, list[float]]] = {IPYKERNEL: {}, PYREPL3: {}}
    try:
        for r in range(repeats):
            home = work / f"home-{r}"
            for kind, figures in one_round(kernels, home, f"{SESSION}-{r}", n, objects, flip=r % 2 == 1).items():
                for name, values in figures.items():
                    got[kind].setdefault(name, []).extend(values)
            shutil.rmtree(home, ignore_errors=True)
    finally:
        kernels.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    ipy, ours = got[IPYKERNEL], got[PYREPL3]
    data = f"{data_mb:.0f} MB" if data_mb >= 10 else f"{data_mb:.1f} MB"
    rows = [
        versus(f"cell 1 round trip (creates {data} of arrays + {objects:,} objects)", None, ipy["cell1"], ours["cell1"], plus=1500),
        versus(f"small cell next to {data} of arrays", "neighbour500", ipy["small"], ours["small"], plus=NEIGHBOUR_PLUS_MS),
        alone(f"restore after kill -9 of {data} of arrays + {objects:,} objects (kernel-reported)", "restore500",
              ours["restore"], at_most=300, note="issue 4's target"),
        versus("start to ready, with restore", None, ipy["start"], ours["restart"], note="ipykernel: start, nothing to restore"),
        alone(f"store on disk / array data ({data})", None, [d / data_mb for d in ours["disk"]], at_most=1.05, unit="x",
              note=f"{statistics.median(ours['disk']):.1f} MB, with the SQLite database and the pickled objects"),
        versus("peak kernel RSS (VmHWM)", None, ipy["hwm"], ours["hwm"], times=1.10, unit="MB"),
    ]
    header = (f"4 arrays x {n * 8 / 1e6:.0f} MB, {objects:,} objects; {repeats} rounds, the kernels side by side "
              f"and taking turns")
    return Report("bench_checkpoint", args.small, header, load_before, rows).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_checkpoint")
