"""A cell changing one of 20 DataFrames: PyREPL3 beside plain ipykernel, measured in one run.

    .venv/bin/python benchmarks/bench_frames.py                # 20 frames of 5 MB, 30 cells of each kernel
    .venv/bin/python benchmarks/bench_frames.py --repeats 60
    .venv/bin/python benchmarks/bench_frames.py --small        # CI: 20 frames of 64 KB, 6 cells

Both kernels are started by jupyter_client (the venv's ``python3`` kernelspec and
``pyrepl3``, a fresh PYREPL3_HOME) and live side by side. Each gets the same
untimed setup cell: 20 float64 DataFrames built separately (``--mb`` MB each),
so they share nothing a user could see. Then, interleaved and alternating
which kernel goes first, ``--repeats`` times each: ``df7.iloc[0, 0] = <n>``
(one frame changed; timed from execute_request to execute_reply and iopub
idle) and ``pass`` (the same round trip without a change, for comparison).

PyREPL3 runs with PYREPL3_DEBUG=1, which logs what each checkpoint pickled;
the benchmark prints the names its last checkpoint of the changing cell
pickled (``df7`` alone: the frames are not one alias group) and fails if
that line is missing.

Target, printed and not asserted: the changing cell <= ipykernel's + 10 ms
(median). The machine's load (``os.getloadavg``) is printed before and after:
compare only figures of the same run. ``--json``: the rows as JSON
(benchmarks/_report.py). Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import Report, guard, load, versus  # noqa: E402
from bench_core import BenchError, Kernels, run_cell  # noqa: E402
from bench_start import IPYKERNEL, PYREPL3, Series, interleaved  # noqa: E402

SESSION = "bench-frames"
FRAMES = 20
TARGET_MS = 10.0

SETUP = "import numpy as np, pandas as pd\n" + "".join(
    f"df{i} = pd.DataFrame(np.full(({{rows}}, 10), {i}.0), columns=[f'c{{{{k}}}}' for k in range(10)])\n" for i in range(FRAMES)
)
CHANGE = "df7.iloc[0, 0] = {n}.0"
CHECK = (
    "assert float(df7.iloc[0, 0]) == {n}.0 and df7.shape == df0.shape\n"
    "assert all(float(globals()[f'df{{i}}'].iloc[-1, -1]) == float(i) for i in range(%d))" % FRAMES
)
PICKLED = re.compile(r"checkpoint after execution \d+: pickled \d+ name\(s\) \[([^\]]*)\]")


def rows_for(mb: float) -> int:
    return max(int(mb * 2**20 / 8 / 10), 1)  # float64 x 10 columns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="timed cells of each kernel and kind (default 30; 6 with --small)")
    parser.add_argument("--mb", type=float, default=None, help="size of each frame, MB (default 5; 1/16 with --small)")
    parser.add_argument("--small", action="store_true", help="CI size: 6 repeats, 20 frames of 64 KB")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/_report.py)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (6 if args.small else 30)
    mb = args.mb or (1 / 16 if args.small else 5.0)
    rows = rows_for(mb)

    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-frames-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython"), "PYREPL3_SESSION": SESSION, "PYREPL3_DEBUG": "1"}, work)
    load_before = load()
    change = {IPYKERNEL: Series(), PYREPL3: Series()}
    trivial = {IPYKERNEL: Series(), PYREPL3: Series()}
    try:
        clients = {}
        for kind in (IPYKERNEL, PYREPL3):
            _km, kc, _ready = kernels.start(kind, {"PYREPL3_HOME": str(work / "home")})
            run_cell(kc, SETUP.format(rows=rows), timeout=1200)
            run_cell(kc, "pass")  # untimed: the first checkpoint after the setup is behind us
            clients[kind] = kc
        log = kernels.logs[-1]

        def one(kind: str, i: int) -> None:
            change[kind].add(run_cell(clients[kind], CHANGE.format(n=100 + i)))
            trivial[kind].add(run_cell(clients[kind], "pass"))

        interleaved(repeats, one)
        pickled = [p for p in PICKLED.findall(log.read_text(errors="replace")) if p]
        if not pickled:
            raise BenchError(f"PyREPL3 logged no checkpoint lines: {log.read_text(errors='replace')[-2000:]!r}")
        changing = pickled[-1]  # the last non-empty one: the last changing cell (``pass`` pickles nothing)
        for kind in (IPYKERNEL, PYREPL3):  # untimed: every frame holds what the cells wrote
            run_cell(clients[kind], CHECK.format(n=100 + repeats - 1))
    finally:
        kernels.stop_all()
    shutil.rmtree(work, ignore_errors=True)
    size = f"{rows * 80 / 2**20:.2f} MB"
    report_rows = [
        versus(f"a cell changing one of {FRAMES} DataFrames ({size} each)", "frames", change[IPYKERNEL].values,
               change[PYREPL3].values, plus=TARGET_MS, note=f"pyrepl3's checkpoint of the changing cell pickled: [{changing}]"),
        versus("trivial cell (pass), same kernels", None, trivial[IPYKERNEL].values, trivial[PYREPL3].values),
    ]
    header = (f"{FRAMES} DataFrames of {size} each (built separately), {repeats} interleaved cells of each kernel "
              f"(execute_request -> reply + idle)")
    notes = [f"checkpoint of the changing cell pickled: [{changing}]"]
    return Report("bench_frames", args.small, header, load_before, report_rows, notes).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_frames")
