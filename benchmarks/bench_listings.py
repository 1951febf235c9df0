"""Listings on a long session's store: ``pyrepl3 executions``, ``sessions`` and ``%durable`` (PyREPL3 only).

    .venv/bin/python benchmarks/bench_listings.py           # one 50 MB output; 10,000 executions
    .venv/bin/python benchmarks/bench_listings.py --small   # CI: one 1 MB output; 300 executions

No ipykernel counterpart: ipykernel keeps no store. Two embedded stores are
written through the real engine in-process (the runtime, the state machine and
the SQLite writes a cell's promise takes; no IPython): one holding a few
executions, one of which resolved with a single ``--mb`` MB output, and one
holding ``--history`` executions. On each, ``--repeats`` times, interleaved:

* ``catalog.executions()``: what ``pyrepl3 executions`` lists;
* ``catalog.sessions()``: what ``pyrepl3 sessions`` lists;
* ``count()`` + ``executions(limit=50)``: what ``%durable`` (status) lists;
* the ``pyrepl3 executions --json`` command itself, beside ``pyrepl3 executions``
  on an empty store (the interpreter's start, which no listing can save).

Then ``--checkpoints`` real cells (``v = <i>``, one checkpoint each) in a real PyREPL3
kernel, killed with -9; ``--repeats`` starts of PyREPL3 on that store, interleaved with
starts on a new store: from start to the first ``assert v == ...`` reply (the restore
is checked). A start reads the newest checkpoints, not all of them.

Target, printed and not asserted: each listing <= 0.1 s; the start with history <= a new
session's + 0.1 s. The machine's load
(``os.getloadavg``) is printed before and after. ``--json``: the rows as JSON
(benchmarks/_report.py). Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import Report, alone, guard, load, progress  # noqa: E402
from bench_core import BenchError, Kernels, run_cell  # noqa: E402
from bench_start import PYREPL3, timed_start  # noqa: E402

SESSION = "bench-listings"
PYREPL3_CLI = Path(sys.executable).parent / "pyrepl3"
TARGET_S = 0.1


def fill(home: Path, count: int, big_mb: float) -> None:
    """``count`` resolved executions of SESSION (the second with one ``big_mb`` MB stream output)."""
    from kernel.core.locations import store_path
    from kernel.core.models import CellResult, ExecutionParams, Timings
    from kernel.durable.dispatcher import CellDispatcher
    from kernel.durable.runtime import DurableRuntime
    from kernel.store.embedded.locks import FlockSessionLock
    from kernel.store.embedded.store import EmbeddedStore

    lock = FlockSessionLock(home, SESSION).acquire()
    store = runtime = None
    try:
        pid = uuid.uuid4().hex
        store = EmbeddedStore(store_path(home), SESSION, pid=pid).open()
        dispatcher = CellDispatcher()
        runtime = DurableRuntime(store, session=SESSION, dispatcher=dispatcher, pid=pid).start()
        for i in range(1, count + 1):
            msg_id = uuid.uuid4().hex
            eid = f"exec:{msg_id}"
            code = "print('x' * n)" if i == 2 and big_mb else f"v{i} = {i}"
            params = ExecutionParams(
                session=SESSION, msg_id=msg_id, code=code, execution_count=i, kernel_pid=os.getpid(),
                nonce=uuid.uuid4().hex, submitted_at=time.time(), cell_id=f"cell-{i}",
            )
            ticket = dispatcher.expect(eid)
            runtime.submit(params)
            handoff = ticket.result(timeout=30)
            outputs = [{"output_type": "stream", "name": "stdout", "text": "x" * int(big_mb * 1_000_000)}] if code.startswith("print") else []
            now = time.time()
            handoff.outcome.set_result(
                CellResult(execution_id=eid, execution_count=i, outputs=outputs, timings=Timings(started=now, finished=now, duration_ms=0.0))
            )
            if runtime.wait_settled(eid, timeout=60).state != "resolved":
                raise BenchError(f"{eid} did not resolve")
    finally:
        if runtime is not None:
            runtime.stop()
        if store is not None:
            store.close()
        lock.release()


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cli_executions(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYREPL3_")}
    done = subprocess.run([str(PYREPL3_CLI), "--home", str(home), "executions", "--json"], capture_output=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BenchError(f"pyrepl3 executions failed: {done.stderr.decode()[-500:]}")


def starts(work: Path, checkpoints: int, repeats: int) -> dict[str, list[float]]:
    """Start to first reply with ``checkpoints`` checkpoints in the session, beside a new session."""
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython"), "PYREPL3_SESSION": SESSION}, work)
    out: dict[str, list[float]] = {}
    try:
        env = {"PYREPL3_HOME": str(work / "checkpoints")}
        km, kc, _ = kernels.start(PYREPL3, env)
        t0 = time.perf_counter()
        for i in range(checkpoints):
            run_cell(kc, f"v = {i}")
        progress(f"  {checkpoints} cells (one checkpoint each) in {time.perf_counter() - t0:.1f}s")
        os.kill(km.provisioner.process.pid, 9)
        km.provisioner.process.wait(timeout=30)
        kernels.stop(km)
        kernels.stop(kernels.start(PYREPL3, {"PYREPL3_HOME": str(work / "warm")})[0])  # untimed: the page cache
        for i in range(repeats):
            for label, home, check in (
                (f"kernel start with {checkpoints:,} checkpoints (first reply)", env["PYREPL3_HOME"], f"assert v == {checkpoints - 1}"),
                ("kernel start, new session (first reply)", str(work / f"new-{i}"), "pass"),
            )[:: 1 if i % 2 == 0 else -1]:
                s = timed_start(kernels, PYREPL3, {"PYREPL3_HOME": home}, first_cell=check)
                out.setdefault(label, []).append(s.first)
                kernels.stop(s.km)
    finally:
        kernels.stop_all()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CI: a 1 MB output, 300 executions, 3 repeats")
    ap.add_argument("--mb", type=float, default=None, help="the one large output, MB (default 50)")
    ap.add_argument("--history", type=int, default=None, help="executions in the long store (default 10000)")
    ap.add_argument("--repeats", type=int, default=None, help="timings of each listing (default 15)")
    ap.add_argument("--checkpoints", type=int, default=None, help="checkpoints in the session for the start row (default 5000; 0: no start row)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/_report.py)")
    args = ap.parse_args(argv)
    mb = args.mb if args.mb is not None else (1 if args.small else 50)
    history = args.history if args.history is not None else (300 if args.small else 10_000)
    repeats = args.repeats if args.repeats is not None else (3 if args.small else 15)
    checkpoints = args.checkpoints if args.checkpoints is not None else (20 if args.small else 5000)
    load_before = load()

    from kernel.store.embedded.catalog import EmbeddedCatalog

    with tempfile.TemporaryDirectory(prefix="bench-listings-") as tmp:
        big, long, empty = Path(tmp, "big"), Path(tmp, "long"), Path(tmp, "empty")
        t0 = time.perf_counter()
        fill(big, 5, mb)
        fill(long, history, 0)
        empty.mkdir()
        progress(f"  stores written through the engine in {time.perf_counter() - t0:.1f}s: "
                 f"{(big / 'store.sqlite3').stat().st_size / 1e6:.1f} MB and {(long / 'store.sqlite3').stat().st_size / 1e6:.1f} MB")

        rows: dict[str, list[float]] = {}
        cases: list[tuple[str, Callable[[], object]]] = []
        keys = {f"executions (catalog), store holding one {mb:g} MB output": "listing50"}
        for name, home in ((f"one {mb:g} MB output", big), (f"{history:,} executions", long)):
            cat = EmbeddedCatalog(home / "store.sqlite3").open()
            if len(cat.executions(SESSION)) != (5 if home is big else history):
                raise BenchError(f"{home}: the listing does not hold every execution")
            cases += [
                (f"executions (catalog), store holding {name}", lambda c=cat: c.executions()),
                (f"sessions (catalog), store holding {name}", lambda c=cat: c.sessions()),
                (f"%durable listing (count + last 50), store holding {name}", lambda c=cat: (c.count(SESSION), c.executions(SESSION, limit=50))),
                (f"`pyrepl3 executions --json`, store holding {name}", lambda h=home: cli_executions(h)),
            ]
        cases.append(("`pyrepl3 executions --json`, empty store (interpreter start)", lambda: cli_executions(empty)))
        for _ in range(repeats):  # interleaved: one of each per round
            for label, fn in cases:
                rows.setdefault(label, []).append(timed(fn))
        if checkpoints:
            rows.update(starts(Path(tmp), checkpoints, max(repeats // 2, 2)))

    def median_of(suffix: str) -> float:
        return next(statistics.median(v) * 1000 for k, v in rows.items() if k.endswith(suffix))

    report_rows = []
    for label, values in rows.items():
        ms = [v * 1000 for v in values]
        if "checkpoints (first reply)" in label:
            new = median_of("new session (first reply)")
            report_rows.append(alone(label, "start5000", ms, target=f"<= a new session's start + {TARGET_S * 1000:.0f} ms",
                                     met=statistics.median(ms) <= new + TARGET_S * 1000, note=f"new session: {new:.0f} ms"))
        elif label.startswith("`pyrepl3 executions --json`, store"):
            interpreter = median_of("empty store (interpreter start)")
            report_rows.append(alone(label, None, ms, note=f"{statistics.median(ms) - interpreter:+.0f} ms over the empty store's"))
        elif label.startswith("`pyrepl3 executions") or label.startswith("kernel start"):
            report_rows.append(alone(label, None, ms))
        else:
            report_rows.append(alone(label, keys.get(label), ms, at_most=TARGET_S * 1000))
    header = f"one {mb:g} MB output; {history:,} executions; {repeats} timings of each listing, interleaved; PyREPL3 only"
    return Report("bench_listings", args.small, header, load_before, report_rows).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_listings")
