"""The hot path: a trivial cell, a small cell next to large arrays, a step, a step value, Postgres.

    .venv/bin/python benchmarks/bench_hotpath.py            # 600 cells per kernel, 500 MB of arrays, 1,000 versions
    .venv/bin/python benchmarks/bench_hotpath.py --small    # CI: 40 cells, 20 MB, 100 versions
    PYREPL3_TEST_PG_DSN=postgresql://... .venv/bin/python benchmarks/bench_hotpath.py   # that server for the Postgres row
    .venv/bin/python benchmarks/bench_hotpath.py --before ../old   # also the kernel/ of another checkout, interleaved

Kernels started by jupyter_client, each with a fresh PYREPL3_HOME:

* ``pass`` round trip (execute_request -> execute_reply and iopub idle) on
  ipykernel, PyREPL3 (embedded) and PyREPL3 on Postgres, in blocks of 20 cells
  per kernel in turn (so drift in load hits all alike): median, p90, p99, and
  PyREPL3 minus ipykernel; and each kernel process's CPU time per cell (all its
  threads, from /proc), which a loaded machine inflates far less than the
  round trip;
* ``x = 1`` in kernels holding 500 MB of numpy arrays (ipykernel and PyREPL3,
  interleaved the same way): a small cell must not pay for the large names;
* inside one PyREPL3 cell, timed with ``time.perf_counter``: ``durable.run`` of
  a trivial function; ``durable.checkpoint`` of a new name each call (version 1)
  and of one name over ``--versions`` versions (first 50 against last 50).

Without ``PYREPL3_TEST_PG_DSN`` a throwaway Postgres is started with
``tests/pg_server.py`` (and stopped); when that cannot be done the Postgres
row is skipped and the reason printed. Targets are printed, never asserted:
trivial cell <= ipykernel + 1 ms median and + 2 ms p99; small cell next to the
arrays <= ipykernel + 1.5 ms; a step <= 0.2 ms; a step value flat in versions;
Postgres trivial cell <= 2x embedded. The machine's load (``os.getloadavg``)
is printed before and after: compare only figures of one run. Exit status 0
unless something failed (2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import Kernels, run_cell  # noqa: E402
from _report import Report, Row, alone, guard, load, versus  # noqa: E402
from bench_start import IPYKERNEL, PYREPL3, cpu_seconds  # noqa: E402
from bench_steps import cell_output, result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 20
ARRAYS = "import numpy as _np\n_big = [_np.full({n}, float(_k)) for _k in range(4)]"

IN_CELL = """
import json as _j, time as _t
def _trivial():
    return None
_step, _new, _ver = [], [], []
for _i in range({steps}):
    _t0 = _t.perf_counter(); durable.run(_trivial); _step.append(_t.perf_counter() - _t0)
for _i in range({names}):
    _t0 = _t.perf_counter(); durable.checkpoint(f'n{{_i}}', _i); _new.append(_t.perf_counter() - _t0)
for _i in range({versions}):
    _t0 = _t.perf_counter(); durable.checkpoint('x', _i); _ver.append(_t.perf_counter() - _t0)
assert durable.get_checkpoint('x') == {versions} - 1
print('RESULT', _j.dumps({{'step': _step, 'new': _new, 'ver': _ver}}))
"""


def p99(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def interleave(clients: dict[str, Any], pids: dict[str, int], code: str, n: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """``n`` round trips of ``code`` per kernel, in blocks of BLOCK, the kernels in turn;
    and each kernel process's CPU milliseconds (all its threads) per cell, which a loaded
    machine inflates far less than the round trip."""
    times: dict[str, list[float]] = {label: [] for label in clients}
    cpu = dict.fromkeys(clients, 0.0)
    for label, kc in clients.items():  # warm-up
        for _ in range(10):
            run_cell(kc, code)
    done = 0
    while done < n:
        k = min(BLOCK, n - done)
        for label, kc in clients.items():
            before = cpu_seconds(pids[label])
            times[label] += [run_cell(kc, code) * 1000 for _ in range(k)]
            cpu[label] += cpu_seconds(pids[label]) - before
        done += k
    return times, {label: total * 1000 / n for label, total in cpu.items()}


def postgres_dsn(work: Path) -> tuple[str | None, str]:
    """A DSN (PYREPL3_TEST_PG_DSN, or a throwaway server's) and what it is, or (None, why not)."""
    if dsn := os.environ.get("PYREPL3_TEST_PG_DSN", "").strip():
        return dsn, "PYREPL3_TEST_PG_DSN"
    running = subprocess.run([sys.executable, str(ROOT / "tests" / "pg_server.py"), "status"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    if running.returncode == 0 and running.stdout.strip():
        return running.stdout.strip().splitlines()[-1], "this checkout's running tests/pg_server.py"
    try:
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "pg_server.py"), "start"],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"tests/pg_server.py start failed: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        return None, f"tests/pg_server.py start failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return done.stdout.strip().splitlines()[-1], "a throwaway server (tests/pg_server.py)"


def stop_postgres() -> None:
    subprocess.run([sys.executable, str(ROOT / "tests" / "pg_server.py"), "stop"],
                   capture_output=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CI size")
    parser.add_argument("--json", action="store_true", help="one JSON document (benchmarks/_report.py)")
    parser.add_argument("--n", type=int, default=None, help="timed cells per kernel (default 600; 60 with --small)")
    parser.add_argument("--mb", type=int, default=None, help="MB of arrays beside the small cell (default 500; 20 with --small)")
    parser.add_argument("--versions", type=int, default=None, help="versions of one step value (default 1000; 100 with --small)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the Postgres row")
    parser.add_argument("--before", metavar="DIR", default="",
                        help="also run PyREPL3 from another checkout's kernel/ (e.g. a `git worktree` of the commit before), "
                             "interleaved with this one, with this venv: before and after in one run")
    args = parser.parse_args(argv)
    n = args.n or (40 if args.small else 600)
    mb = args.mb or (20 if args.small else 500)
    versions = args.versions or (100 if args.small else 1000)
    steps, names = (200, 50) if args.small else (2000, 200)
    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-hotpath-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython")}, work)
    load_before = load()
    rows: list[Row] = []
    notes: list[str] = []
    started_pg = False
    try:
        dsn, source = (None, "--no-postgres") if args.no_postgres else postgres_dsn(work)
        started_pg = dsn is not None and source.startswith("a throwaway")
        homes = {"embedded": {}, **({"postgres": {"PYREPL3_STORE": dsn}} if dsn else {})}
        if args.before:
            # That checkout's kernel package first (and not the working directory's: PYTHONSAFEPATH).
            baseline = {"PYTHONPATH": str(Path(args.before).resolve()), "PYTHONSAFEPATH": "1"}
            homes = {**homes, "embedded, before": baseline, **({"postgres, before": {"PYREPL3_STORE": dsn, **baseline}} if dsn else {})}
        clients: dict[str, Any] = {}
        pids: dict[str, int] = {}
        for label, name, env in [("ipykernel", IPYKERNEL, {}), *(
            (f"pyrepl3 {engine}", PYREPL3, {"PYREPL3_HOME": str(work / f"home-{engine}"), "PYREPL3_SESSION": f"bench-hot-{os.getpid()}-{engine.replace(', ', '-')}", **extra})
            for engine, extra in homes.items()
        )]:
            km, clients[label], _ = kernels.start(name, env)
            pids[label] = km.provisioner.process.pid
        for label, kc in clients.items():  # which kernel/ each PyREPL3 kernel runs
            if label != "ipykernel":
                notes.append(f"{label}: kernel/ from {cell_output(kc, 'import kernel as _k; print(_k.__file__)').strip()}")
        trivial, cpu = interleave(clients, pids, "pass", n)
        base = trivial["ipykernel"]
        rows += [alone(f"kernel CPU per trivial cell: {label}", None, [ms],
                       note="" if label == "ipykernel" else f"+{ms - cpu['ipykernel']:.3f} ms over ipykernel")
                 for label, ms in cpu.items()]
        for label in clients:
            if label == "ipykernel":
                continue
            v = trivial[label]
            dmed, dp99 = statistics.median(v) - statistics.median(base), p99(v) - p99(base)
            note = f"p99 {p99(v):.2f} vs {p99(base):.2f} ms (+{dp99:.2f}; target <= +2)"
            if label.startswith("pyrepl3 postgres"):
                ratio = statistics.median(v) / statistics.median(trivial[label.replace("postgres", "embedded")])
                rows.append(versus(f"trivial cell `pass`: {label}", "postgres" if label == "pyrepl3 postgres" else None, base, v,
                                   target="<= 2x embedded", met=ratio <= 2, note=f"{ratio:.2f}x embedded; {note}"))
            else:
                rows.append(versus(f"trivial cell `pass`: {label}", "trivial" if label == "pyrepl3 embedded" else None, base, v,
                                   target="<= ipykernel + 1 ms median, + 2 ms p99", met=dmed <= 1 and dp99 <= 2, note=note))
        if dsn is None:
            notes.append(f"Postgres row skipped: {source}")

        # In-cell figures (embedded), before the arrays are made.
        for label in [k for k in clients if k.startswith("pyrepl3 embedded")]:
            tag = label.removeprefix("pyrepl3 embedded").strip(", ")
            tag = f" [{tag}]" if tag else ""
            timed = result(cell_output(clients[label], IN_CELL.format(steps=steps, names=names, versions=versions)))
            mine = not tag  # this checkout's kernel fills the rows
            rows.append(alone(f"durable.run step, trivial fn ({steps}){tag}", "step" if mine else None, timed["step"], at_most=0.2))
            rows.append(alone(f"durable.checkpoint, a new name each call ({names}){tag}", None, timed["new"], note="version 1 of its name"))
            first, last = timed["ver"][:50], timed["ver"][-50:]
            growth = statistics.median(last) - statistics.median(first)
            flat = growth <= max(0.05, 0.10 * statistics.median(first))
            rows.append(alone(f"durable.checkpoint, one name: versions 1-50{tag}", None, first))
            rows.append(alone(f"durable.checkpoint, one name: versions {versions - 49}-{versions}{tag}", "ckpt1000" if mine else None, last,
                              target="flat: within 10 % of versions 1-50", met=flat, note=f"{growth:+.3f} ms vs the first 50"))

        # A small cell next to large arrays: ipykernel and PyREPL3 embedded only.
        big = {k: clients[k] for k in clients if k == "ipykernel" or k.startswith("pyrepl3 embedded")}
        for kc in big.values():
            run_cell(kc, ARRAYS.format(n=mb * 1024 * 1024 // 8 // 4), timeout=600)
        small, small_cpu = interleave(big, {k: pids[k] for k in big}, "x = 1", max(n // 2, 20))
        for label in big:
            if label != "ipykernel":
                key = "neighbour500" if label == "pyrepl3 embedded" and mb >= 500 else None
                rows.append(versus(f"`x = 1` next to {mb} MB of arrays: {label}", key, small["ipykernel"], small[label], plus=1.5))
        rows += [alone(f"kernel CPU per `x = 1` next to {mb} MB: {label}", None, [ms],
                       note="" if label == "ipykernel" else f"+{ms - small_cpu['ipykernel']:.3f} ms over ipykernel")
                 for label, ms in small_cpu.items()]
    finally:
        kernels.stop_all()
        if started_pg:
            stop_postgres()
    header = (f"{n} cells per kernel in blocks of {BLOCK}, {mb} MB of arrays, {steps} steps, {versions} versions; "
              f"Postgres: {source if dsn else 'none'}")
    shutil.rmtree(work, ignore_errors=True)
    return Report("bench_hotpath", args.small, header, load_before, rows, notes).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_hotpath")
