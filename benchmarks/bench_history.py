"""Long sessions: checkpoint cost against the namespace and the history, PyREPL3 beside ipykernel in one run.

    .venv/bin/python benchmarks/bench_history.py                # 5,520 cells of history, 2,000 cells adding a name
    .venv/bin/python benchmarks/bench_history.py --repeats 60
    .venv/bin/python benchmarks/bench_history.py --small        # CI: 200 cells of history, 200 cells adding a name

Every kernel is started by jupyter_client (the venv's ``python3`` kernelspec and
``pyrepl3``); the history is built with real cells in the measured kernel (so
IPython's ``_iN`` / ``_N`` / ``In`` / ``Out`` names and PyREPL3's checkpoints
are really there), both kernels side by side, cell by cell alternately.
Timed: execute_request to execute_reply and iopub idle. Rows:

* **``1+1`` after N real cells in the same session**: ``--repeats`` ``1+1``
  cells of each kernel (interleaved) after 10 cells, then again after N cells
  (``v = <i>`` then ``v``, so each has an output ``_N``); then the PyREPL3
  kernel is killed (SIGKILL) and restarted on that session of N checkpoints:
  start to the first execute_reply, beside a new session's start.
* **trivial cell with 10,000 variables**: one setup cell binds 10,000 ints,
  then ``pass`` ``--repeats`` times each; the store's growth per such cell.
* **2,000 cells each adding one name** (``n<i> = <i>``): per-cell medians of
  the first and the last 100, the store's size after them (every file under
  PYREPL3_HOME, WAL included, after a passive WAL checkpoint), then kill -9 and restart to the first
  execute_reply beside a new session's start, and an untimed cell checks that
  every name came back.

Targets (issue 12), printed and not asserted: the trivial cell with 10,000
variables close to ipykernel; the last 100 of the 2,000 within 10 % of the first
100; store <= 20 MB; restart <= a new session's start + 0.1 s. The machine's load
(``os.getloadavg``) is printed before and after: compare only figures of the
same run. Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import Kernels, run_cell  # noqa: E402
from bench_frames import Series  # noqa: E402
from _report import Report, alone, guard, load, versus  # noqa: E402
from bench_start import IPYKERNEL, PYREPL3, cpu_seconds, interleaved  # noqa: E402

SESSION = "bench-history"
VARIABLES = 10_000
RESTART_SLACK_MS = 100.0
GROWTH_LIMIT = 1.10
STORE_LIMIT_MB = 20.0

MANY = "for _k in range({n}):\n    globals()[f'w{{_k}}'] = _k\ndel _k"
CHECK_NAMES = "assert all(globals()[f'n{{i}}'] == i for i in range({n})), 'a name did not come back'\nprint('values ok')"


def store_bytes(home: Path) -> int:
    """Every file under ``home``, after a passive WAL checkpoint (so that pages written before
    are not counted again when SQLite copies them from the WAL into the file)."""
    if (home / "store.sqlite3").exists():
        with contextlib.closing(sqlite3.connect(home / "store.sqlite3", timeout=30)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return sum(p.stat().st_size for p in home.rglob("*") if p.is_file())


def cpu_note(ms: list[float]) -> str:
    return f"{ms[0]:.1f} -> {ms[1]:.1f} ms" if len(ms) == 2 else "not measured"


def kill9(km: Any) -> None:
    os.kill(km.provisioner.process.pid, 9)
    km.provisioner.process.wait(timeout=30)


def timed_restart(kernels: Kernels, env: dict[str, str], check: str | None = None) -> tuple[float, Any]:
    """Start a PyREPL3 kernel with ``env``: seconds from start_kernel to the first execute_reply
    (which waits for the restore); ``check`` runs untimed after it."""
    t0 = time.perf_counter()
    km, kc, _ready = kernels.start(PYREPL3, env)
    run_cell(kc, "pass", timeout=600)
    took = time.perf_counter() - t0
    if check is not None:
        run_cell(kc, check, timeout=600)
    return took, km


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=None, help="real cells of history (default 5,520; 200 with --small)")
    parser.add_argument("--adding", type=int, default=None, help="cells each adding one name (default 2,000; 200 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="timed trivial cells of each kernel per row (default 30; 6 with --small)")
    parser.add_argument("--restarts", type=int, default=None, help="kill -9 + restarts per session (default 3; 1 with --small)")
    parser.add_argument("--small", action="store_true", help="CI size")
    parser.add_argument("--json", action="store_true", help="one JSON document (benchmarks/_report.py)")
    args = parser.parse_args(argv)
    history = args.history or (200 if args.small else 5_520)
    adding = args.adding or (200 if args.small else 2_000)
    repeats = args.repeats or (6 if args.small else 30)
    restarts = args.restarts or (1 if args.small else 3)
    window = min(100, adding // 2)

    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-history-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython"), "PYREPL3_SESSION": SESSION}, work)
    load_before = load()
    early = {IPYKERNEL: Series(), PYREPL3: Series()}
    late = {IPYKERNEL: Series(), PYREPL3: Series()}
    many = {IPYKERNEL: Series(), PYREPL3: Series()}
    first = {IPYKERNEL: Series(), PYREPL3: Series()}
    last = {IPYKERNEL: Series(), PYREPL3: Series()}
    restart_h, restart_a, fresh = Series(), Series(), Series()
    many_growth = 0.0
    #: Kernel CPU ms per cell, first and last window of the cells adding a name: what the
    #: wall-clock ratio hides under a shared machine's noise.
    cpu: dict[str, list[float]] = {IPYKERNEL: [], PYREPL3: []}
    adding_mb = 0.0
    try:
        def fresh_start(tag: str) -> None:
            took, km = timed_restart(kernels, {"PYREPL3_HOME": str(work / f"fresh-{tag}")})
            fresh.add(took)
            kernels.stop(km)

        # -- 1+1 after N real cells -------------------------------------------------
        home_h = work / "history"
        clients: dict[str, Any] = {}
        managers: dict[str, Any] = {}
        for kind in (IPYKERNEL, PYREPL3):
            managers[kind], clients[kind], _ = kernels.start(kind, {"PYREPL3_HOME": str(home_h)})

        def build(upto: int, start: int) -> None:
            for i in range(start, upto):
                for kind in (IPYKERNEL, PYREPL3) if i % 2 == 0 else (PYREPL3, IPYKERNEL):
                    run_cell(clients[kind], f"v = {i}\nv", timeout=120)

        build(10, 0)
        interleaved(repeats, lambda kind, i: early[kind].add(run_cell(clients[kind], "1+1")))
        build(history, 10)
        interleaved(repeats, lambda kind, i: late[kind].add(run_cell(clients[kind], "1+1")))
        kill9(managers[PYREPL3])
        kernels.stop(managers[PYREPL3])
        kernels.stop(managers[IPYKERNEL])
        for r in range(restarts):
            fresh_start(f"h{r}")
            took, km = timed_restart(kernels, {"PYREPL3_HOME": str(home_h)}, check=f"assert v == {history - 1}")
            restart_h.add(took)
            kill9(km)
            kernels.stop(km)

        # -- trivial cell with 10,000 variables -------------------------------------
        home_m = work / "many"
        for kind in (IPYKERNEL, PYREPL3):
            managers[kind], clients[kind], _ = kernels.start(kind, {"PYREPL3_HOME": str(home_m), "PYREPL3_SESSION": "bench-many"})
            run_cell(clients[kind], MANY.format(n=VARIABLES), timeout=600)
            run_cell(clients[kind], "pass", timeout=600)  # untimed: the first checkpoint after the setup is behind us
        before = store_bytes(home_m)
        interleaved(repeats, lambda kind, i: many[kind].add(run_cell(clients[kind], "pass", timeout=120)))
        many_growth = (store_bytes(home_m) - before) / repeats
        kernels.stop_all()

        # -- cells each adding one name ---------------------------------------------
        home_a = work / "adding"
        for kind in (IPYKERNEL, PYREPL3):
            managers[kind], clients[kind], _ = kernels.start(kind, {"PYREPL3_HOME": str(home_a), "PYREPL3_SESSION": "bench-adding"})
        pids = {kind: managers[kind].provisioner.process.pid for kind in (IPYKERNEL, PYREPL3)}
        for i in range(adding):
            if i in (0, adding - window):  # kernel CPU over each window (its threads included: gc's too)
                for kind in pids:
                    cpu[kind].append(-cpu_seconds(pids[kind]))
            for kind in (IPYKERNEL, PYREPL3) if i % 2 == 0 else (PYREPL3, IPYKERNEL):
                took = run_cell(clients[kind], f"n{i} = {i}", timeout=120)
                if i < window:
                    first[kind].add(took)
                elif i >= adding - window:
                    last[kind].add(took)
            if i in (window - 1, adding - 1):
                for kind in pids:
                    cpu[kind][-1] = (cpu[kind][-1] + cpu_seconds(pids[kind])) * 1000 / window
        kill9(managers[PYREPL3])
        kernels.stop_all()
        adding_mb = store_bytes(home_a) / 2**20
        for r in range(restarts):
            fresh_start(f"a{r}")
            took, km = timed_restart(kernels, {"PYREPL3_HOME": str(home_a), "PYREPL3_SESSION": "bench-adding"},
                                     check=CHECK_NAMES.format(n=adding))  # fmt: skip
            restart_a.add(took)
            kill9(km)
            kernels.stop(km)
    finally:
        kernels.stop_all()

    ours_growth = last[PYREPL3].median / first[PYREPL3].median
    restart_limit = fresh.median + RESTART_SLACK_MS
    flat = early[PYREPL3].median * GROWTH_LIMIT  # "flat": as a trivial cell after 10 cells, within 10 %
    names_met = ours_growth <= GROWTH_LIMIT and adding_mb <= STORE_LIMIT_MB and restart_a.median <= restart_limit
    rows = [
        versus("1+1 after 10 real cells in the same session", None, early[IPYKERNEL].values, early[PYREPL3].values),
        versus(f"1+1 after {history} real cells in the same session", "history", late[IPYKERNEL].values, late[PYREPL3].values,
               target=f"<= {GROWTH_LIMIT:.2f}x PyREPL3 after 10 cells ({flat:.1f} ms)", met=late[PYREPL3].median <= flat),
        versus(f"trivial cell with {VARIABLES:,} variables", "vars10k", many[IPYKERNEL].values, many[PYREPL3].values,
               target=f"<= {GROWTH_LIMIT:.2f}x PyREPL3 with 10 variables ({flat:.1f} ms)", met=many[PYREPL3].median <= flat,
               note=f"store growth per cell {many_growth / 1024:.1f} KB"),
        versus(f"{adding} cells adding one name: first {window}", None, first[IPYKERNEL].values, first[PYREPL3].values),
        versus(f"{adding} cells adding one name: last {window}", "names2000", last[IPYKERNEL].values, last[PYREPL3].values,
               target=f"last/first <= {GROWTH_LIMIT:.2f}; store <= {STORE_LIMIT_MB:g} MB; restart <= new + {RESTART_SLACK_MS:g} ms",
               met=names_met,
               note=f"last/first {ours_growth:.2f}; store {adding_mb:.1f} MB; restart {restart_a.median:.0f} ms vs new {fresh.median:.0f} ms; "
                    f"kernel CPU per cell first -> last: {cpu_note(cpu[PYREPL3])} (ipykernel {cpu_note(cpu[IPYKERNEL])})"),
        alone("new session: start -> first execute_reply", None, fresh.values),
        alone(f"restart after kill -9, {history} cells of history", None, restart_h.values, at_most=restart_limit,
              target=f"<= new + {RESTART_SLACK_MS:g} ms"),
        alone(f"restart after kill -9, {adding} cells adding a name", None, restart_a.values, at_most=restart_limit,
              target=f"<= new + {RESTART_SLACK_MS:g} ms"),
    ]
    header = (f"{history} cells of history, {adding} cells adding a name, {repeats} timed trivial cells of each kernel "
              f"per row, {restarts} restart(s) per session")
    shutil.rmtree(work, ignore_errors=True)
    return Report("bench_history", args.small, header, load_before, rows).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_history")
