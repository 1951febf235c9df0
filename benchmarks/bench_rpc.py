"""Remote calls: one ``durable.rpc`` round trip beside a local ``durable.run`` and a plain call, and
``durable.map`` throughput with 1, 2 and 4 workers, in a real kernel on Postgres.

    .venv/bin/python benchmarks/bench_rpc.py             # 200 round trips of each; map of 1,000 tasks, 3 times per size
    .venv/bin/python benchmarks/bench_rpc.py --small     # CI: 30 round trips; map of 200 tasks, once per size
    PYREPL3_TEST_PG_DSN=postgresql://... .venv/bin/python benchmarks/bench_rpc.py   # on that database

Postgres: ``PYREPL3_TEST_PG_DSN`` when set, else the checkout's throwaway
server (``tests/pg_server.py``: reused when running, else started for this run
and stopped after). One PyREPL3 kernel (jupyter_client, a fresh PYREPL3_HOME)
and ``pyrepl3 worker`` processes (their own homes and working directories, the
session key in PYREPL3_KEY), each worker group its own for one measurement.

Inside one cell, in interleaved blocks of 10, each call timed with
``time.perf_counter``: ``f(1)`` (plain), ``durable.run(f, 1)`` (a local step,
one write) and ``durable.rpc(f, 1, group=...).result()`` (a task promise, a
worker's pick-up, run and settle, the kernel's notice and verify), ``f`` a
trivial function defined in the cell (so it travels by value). Then
``durable.map(f, range(N), progress=False)`` on groups of 1, 2 and 4 workers
(``--concurrency 4`` each): tasks per second from the call to the last result.
No targets: figures only (the issue asks for the overhead and the scaling). The
machine's load is printed before and after; ``--json``: the rows as JSON
(benchmarks/_report.py). Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import BenchError, Report, alone, guard, load, progress  # noqa: E402
from bench_core import Kernels, run_cell  # noqa: E402
from bench_start import PYREPL3  # noqa: E402
from bench_steps import cell_output, result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PYREPL3_CLI = Path(sys.executable).parent / "pyrepl3"
BLOCK = 10
CONCURRENCY = 4

ROUND_TRIPS = """
import json as _j, time as _t
def _f(x):
    return x + 1
_plain, _run, _rpc = [], [], []
for _b in range({blocks}):
    for _i in range({block}):
        _t0 = _t.perf_counter(); _f(1); _plain.append(_t.perf_counter() - _t0)
    for _i in range({block}):
        _t0 = _t.perf_counter(); durable.run(_f, 1); _run.append(_t.perf_counter() - _t0)
    for _i in range({block}):
        _t0 = _t.perf_counter(); _v = durable.rpc(_f, 1, group={group!r}).result(timeout=120); _rpc.append(_t.perf_counter() - _t0)
        assert _v == 2, _v
print('RESULT', _j.dumps({{'plain': _plain, 'run': _run, 'rpc': _rpc}}))
"""

MAP = """
import json as _j, time as _t
def _g(x):
    return x * 2
_t0 = _t.perf_counter()
_out = durable.map(_g, range({n}), group={group!r}, progress=False)
_took = _t.perf_counter() - _t0
assert _out == [x * 2 for x in range({n})]
print('RESULT', _j.dumps({{'took': [_took]}}))
"""


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A DSN: PYREPL3_TEST_PG_DSN, or the checkout's throwaway server (started here if it is not running)."""
    if dsn := os.environ.get("PYREPL3_TEST_PG_DSN", "").strip():
        yield dsn
        return
    server = [sys.executable, str(ROOT / "tests" / "pg_server.py")]
    status = subprocess.run([*server, "status"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if status.returncode == 0 and status.stdout.strip():
        yield status.stdout.strip()
        return
    started = subprocess.run([*server, "start"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=180)
    if started.returncode != 0 or not started.stdout.strip():
        raise BenchError(f"could not start Postgres (tests/pg_server.py start): {started.stderr[-1500:]}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([*server, "stop"], capture_output=True, stdin=subprocess.DEVNULL, timeout=120)


class Workers:
    """``pyrepl3 worker`` processes, stopped (SIGTERM, then SIGKILL) whatever happens."""

    def __init__(self, work: Path, dsn: str, key: str) -> None:
        self.work, self.dsn, self.key = work, dsn, key
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, group: str, n: int) -> list[subprocess.Popen[bytes]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYREPL3_")}
        started = []
        for _ in range(n):
            i = len(self.procs)
            cwd = self.work / f"worker{i}"
            cwd.mkdir()
            env.update(PYREPL3_HOME=str(cwd / "home"), PYREPL3_KEY=self.key)
            with open(self.work / f"worker{i}.log", "ab") as log:
                proc = subprocess.Popen(
                    [str(PYREPL3_CLI), "worker", "--store", self.dsn, "--group", group, "--concurrency", str(CONCURRENCY)],
                    env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            self.procs.append(proc)
            started.append(proc)
        return started

    def stop(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM):
                progress(f"a worker exited with status {proc.returncode}")

    def stop_all(self) -> None:
        self.stop(self.procs)

    def log_tail(self) -> str:
        return "\n".join(f"{p.name}: {p.read_text(errors='replace')[-800:]}" for p in sorted(self.work.glob("worker*.log")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trips", type=int, default=None, help="timed calls of each kind (default 200; 30 with --small)")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per durable.map (default 1000; 200 with --small)")
    parser.add_argument("--repeat", type=int, default=None, help="maps per worker count (default 3; 1 with --small)")
    parser.add_argument("--small", action="store_true", help="CI size")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/_report.py)")
    args = parser.parse_args(argv)
    trips = args.trips or (30 if args.small else 200)
    tasks = args.tasks or (200 if args.small else 1000)
    repeat = args.repeat or (1 if args.small else 3)

    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-rpc-"))
    key = secrets.token_hex(32)
    load_before = load()
    rows, notes = [], []
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython")}, work)
    try:
        with postgres() as dsn:
            workers = Workers(work, dsn, key)
            try:
                env = {"PYREPL3_HOME": str(work / "home"), "PYREPL3_SESSION": f"bench-rpc-{os.getpid()}", "PYREPL3_STORE": dsn, "PYREPL3_KEY": key}
                _km, kc, _ready = kernels.start(PYREPL3, env)
                run_cell(kc, "pass")
                one = f"bench{uuid.uuid4().hex[:8]}"
                first = workers.start(one, 1)
                progress(f"bench_rpc: {trips} round trips of each kind, one worker")
                cell_output(kc, f"durable.rpc(len, [1], group={one!r}).result(timeout=120)", timeout=180)  # the worker is up
                timed = result(cell_output(kc, ROUND_TRIPS.format(blocks=max(trips // BLOCK, 1), block=BLOCK, group=one), timeout=900))
                workers.stop(first)
                plain, run, rpc = (statistics.median(timed[k]) for k in ("plain", "run", "rpc"))
                rows += [
                    alone("plain call f(1), in a cell", None, timed["plain"]),
                    alone("durable.run(f, 1): a local step on Postgres", None, timed["run"], note=f"{run / plain:.0f}x a plain call"),
                    alone("durable.rpc(f, 1).result(): one worker, on Postgres", None, timed["rpc"],
                          note=f"{rpc / run:.1f}x a local durable.run, +{rpc - run:.2f} ms"),
                ]
                for n in (1, 2, 4):
                    group = f"bench{uuid.uuid4().hex[:8]}"
                    procs = workers.start(group, n)
                    cell_output(kc, f"durable.map(len, [[1]] * {2 * n}, group={group!r}, progress=False)", timeout=180)  # all up
                    rates = []
                    for k in range(repeat):
                        progress(f"bench_rpc: durable.map over {tasks} tasks on {n} worker(s), run {k + 1} of {repeat}")
                        took = result(cell_output(kc, MAP.format(n=tasks, group=group), timeout=1200))["took"][0] / 1000
                        rates.append(tasks / took)
                    workers.stop(procs)
                    rows.append(alone(f"durable.map over {tasks} tiny tasks, {n} worker(s) x concurrency {CONCURRENCY}", None, rates,
                                      unit="tasks/s", note=f"{repeat} run(s)"))
            except BenchError:
                progress(workers.log_tail())
                raise
            finally:
                kernels.stop_all()
                workers.stop_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one_worker = next(r for r in rows if "1 worker(s)" in r.row)
    for r in rows:
        if r.unit == "tasks/s" and r is not one_worker and one_worker.pyrepl3_ms:
            notes.append(f"{r.row}: {r.pyrepl3_ms / one_worker.pyrepl3_ms:.2f}x the throughput of 1 worker")
    header = (f"{trips} timed calls of each kind (interleaved blocks of {BLOCK}) inside one cell; durable.map of {tasks} tasks "
              f"x {repeat} per worker count; Postgres, {os.cpu_count()} CPUs shared by the kernel, the workers and the database")
    return Report("bench_rpc", args.small, header, load_before, rows, notes).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_rpc")
