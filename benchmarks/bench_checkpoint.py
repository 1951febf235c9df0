"""Namespace checkpoint benchmark: PyREPL3 against plain ipykernel, in one run.

    .venv/bin/python benchmarks/bench_checkpoint.py            # full size: 4 x 125 MB arrays + 10,000 objects
    .venv/bin/python benchmarks/bench_checkpoint.py --small    # CI size: 4 x 2 MB arrays + 1,000 objects

The workload (issue 4): cell 1 creates four float64 arrays and instances of a
notebook-defined class; cells 2-21 each run ``counter += 1;
small_list.append(counter)``; then the PyREPL3 kernel is killed with SIGKILL, a
fresh kernel on the same session restores the namespace, and a cell checks
every value. Figures: cell 1 round trip (checkpointing it is the difference to
ipykernel), median small-cell round trip, restore time as the kernel reports
it, kernel start-to-ready (with restore) against ipykernel's start, bytes on
disk against the data, and the kernel's peak RSS (VmHWM) against ipykernel's
after the same cells.
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
from bench_core import BenchError, Kernels, run_cell  # noqa: E402

SESSION = "bench-checkpoint"

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


def workload(kernels: Kernels, name: str, env: dict[str, str], n: int, objects: int) -> dict[str, float]:
    km, kc, start = kernels.start(name, env)
    run_cell(kc, "import numpy as np", timeout=120)  # untimed: both kernels pay numpy's import here
    cell1 = run_cell(kc, CELL1.format(n=n, objects=objects), timeout=600)
    small = [run_cell(kc, SMALL) for _ in range(20)]
    pid = km.provisioner.process.pid
    return {"start": start, "cell1": cell1, "small": statistics.median(small), "hwm": vm_hwm_mb(pid), "km": km, "kc": kc, "pid": pid}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CI size: 4 x 2 MB arrays, 1,000 objects")
    args = parser.parse_args(argv)
    n = 262_144 if args.small else 15_625_000  # float64 elements per array: 2 MB or 125 MB
    objects = 1_000 if args.small else 10_000
    data_mb = 4 * n * 8 / 2**20

    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-ckpt-"))
    home = work / "home"
    base = {"IPYTHONDIR": str(work / "ipython")}
    kernels = Kernels(base, work)
    try:
        ipy = workload(kernels, "python3", {}, n, objects)
        kernels.stop(ipy["km"])
        env = {"PYREPL3_HOME": str(home), "PYREPL3_SESSION": SESSION}
        rep = workload(kernels, "pyrepl3", env, n, objects)
        os.kill(rep["pid"], signal.SIGKILL)
        rep["km"].provisioner.process.wait(timeout=30)
        kernels.stop(rep["km"])
        stored = disk_bytes(home)

        km, kc, restart = kernels.start("pyrepl3", env)
        notes: list[str] = []
        run_cell(kc, CHECK.format(n=n, objects=objects, last=objects - 1), timeout=120, stderr=notes)
        # The restore report is an informational notice: in %durable, not in the cell's outputs.
        run_cell(kc, "%%capture status\n%durable")
        run_cell(kc, "import sys\nsys.stderr.write(status.stdout)", stderr=notes)
        found = re.search(r"restored \d+ names.* in ([0-9.]+)s", "".join(notes))
        if not found:
            raise BenchError(f"the restarted kernel did not report a restore: {''.join(notes)!r}")
        restore = float(found.group(1))
        kernels.stop(km)
    finally:
        kernels.stop_all()

    objects_mb = max(stored / 2**20 - data_mb, 0.0)
    rows = [
        ("cell 1 round trip (creates the data)", f"{ipy['cell1'] * 1000:.0f} ms", f"{rep['cell1'] * 1000:.0f} ms",
         f"{(rep['cell1'] - ipy['cell1']) * 1000:+.0f} ms", "+1500 ms"),
        ("small cell round trip, median of 20", f"{ipy['small'] * 1000:.2f} ms", f"{rep['small'] * 1000:.2f} ms",
         f"{(rep['small'] - ipy['small']) * 1000:+.2f} ms", "+3 ms"),
        ("restore after kill -9 (reported)", "-", f"{restore * 1000:.0f} ms", "-", "300 ms"),
        ("start to ready, with restore", f"{ipy['start'] * 1000:.0f} ms", f"{restart * 1000:.0f} ms",
         f"{(restart - ipy['start']) * 1000:+.0f} ms", "-"),
        ("store on disk / array data", "-", f"{stored / 2**20:.1f} MB / {data_mb:.1f} MB",
         f"{stored / 2**20 / data_mb:.3f}x", "1.05x"),
        ("peak kernel RSS (VmHWM)", f"{ipy['hwm']:.0f} MB", f"{rep['hwm']:.0f} MB",
         f"{rep['hwm'] / ipy['hwm']:.3f}x", "1.10x"),
    ]
    print(f"bench_checkpoint: {'small' if args.small else 'full'} size: 4 arrays x {n * 8 / 2**20:.0f} MB, {objects} objects; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{'metric':<40}| {'ipykernel':>10} | {'pyrepl3':>22} | {'delta/ratio':>12} | target")
    print("-" * 40 + "+" + "-" * 12 + "+" + "-" * 24 + "+" + "-" * 14 + "+-------")
    for label, a, b, d, t in rows:
        print(f"{label:<40}| {a:>10} | {b:>22} | {d:>12} | {t}")
    print(f"(store on disk includes the SQLite database and about {objects_mb:.1f} MB of pickled objects)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
