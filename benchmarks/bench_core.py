"""Trivial cells, and the same after a long history of real cells: PyREPL3 beside plain ipykernel, in one run.

    .venv/bin/python benchmarks/bench_core.py            # N=500 timed cells, history of 5,520 real cells
    .venv/bin/python benchmarks/bench_core.py --small    # CI: N=40, history of 150 cells
    .venv/bin/python benchmarks/bench_core.py --json     # the rows as JSON (benchmarks/_report.py)

Two kernels started by jupyter_client live side by side: ipykernel (kernelspec
``python3``) and PyREPL3 (``pyrepl3``, a fresh PYREPL3_HOME), each with its own
IPYTHONDIR. Everything is timed from ``kc.execute`` until the ``execute_reply``
*and* iopub's ``idle`` for it, round-robin in blocks of ``--block`` cells so
that load from other work on the machine hits both alike:

1. ``pass`` and ``1+1``, ``--n`` each after ``--warmup`` cells (the measured
   codes in turn, so one-time costs stay out of the figures);
2. the history: ``--history`` real cells in each measured kernel (assignments,
   expressions with an ``Out`` entry, prints, a function, imports: IPython's
   ``_iN``/``_N`` names grow as in a notebook), each timed; the first 100 of
   them against the last 100;
3. ``1+1`` again, ``--n`` times: after the history.

Targets, printed and not asserted: a trivial cell <= ipykernel + 1 ms
(median) and + 2 ms (p99); ``1+1`` after the history flat: within max(0.5 ms,
10 %) of the same kernel's ``1+1`` before it. The script checks that PyREPL3
stored every cell it ran (a silently disabled durability layer cannot pass for
a fast one). Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

sys.path.insert(0, str(Path(__file__).parent))
from _report import BenchError, Report, guard, load, p90, progress, quantile, versus  # noqa: E402, F401

IPYKERNEL = "python3"
PYREPL3 = "pyrepl3"

TRIVIAL_PLUS_MS = 1.0  # median
TRIVIAL_P99_PLUS_MS = 2.0
FLAT_ABS_MS = 0.5
FLAT_REL = 0.10

CELL_TIMEOUT = 30.0  # seconds, one execution (reply + idle)
START_TIMEOUT = 60.0  # seconds, wait_for_ready

#: The history's cells, in turn: what a notebook does (names, Out entries, prints, a def, an import).
HISTORY = (
    "a = {i}",
    "a + 1",
    "print(a)",
    "b = [a] * 10",
    "len(b)",
    "def f(x):\n    return x + a",
    "f({i})",
    "import math\nmath.sqrt(a)",
)


# -- kernels -------------------------------------------------------------------


class Kernels:
    """Starts kernels and guarantees they are all shut down (even on error)."""

    def __init__(self, base_env: dict[str, str], log_dir: Path) -> None:
        self.base_env = base_env
        self.log_dir = log_dir
        self.logs: list[Path] = []
        self._live: list[list[Any]] = []  # [manager, client or None]

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> tuple[KernelManager, BlockingKernelClient, float]:
        """Start a kernel; return (manager, ready client, seconds from start_kernel to ready)."""
        env = {**os.environ, **self.base_env, **(extra_env or {})}
        km = self._manager(name)
        entry: list[Any] = [km, None]
        self._live.append(entry)  # registered first: a half-started kernel is shut down too
        log = self.log_dir / f"kernel-{len(self.logs)}-{name}.log"
        self.logs.append(log)
        with log.open("wb") as out:  # the kernel's stdout/stderr; shown when something fails
            t0 = time.perf_counter()
            km.start_kernel(env=env, stdout=out, stderr=out)
        kc = km.client()
        entry[1] = kc
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=START_TIMEOUT)
        except RuntimeError as exc:
            raise BenchError(f"kernel {name!r} did not become ready within {START_TIMEOUT:g}s: {exc}") from exc
        return km, kc, time.perf_counter() - t0

    def _manager(self, name: str) -> KernelManager:
        return KernelManager(kernel_name=name)

    def stop(self, km: KernelManager) -> None:
        for i, (m, kc) in enumerate(self._live):
            if m is km:
                del self._live[i]
                _shutdown(m, kc)
                return

    def stop_all(self) -> None:
        while self._live:
            km, kc = self._live.pop()
            _shutdown(km, kc)


def _shutdown(km: KernelManager, kc: BlockingKernelClient | None) -> None:
    if kc is not None:
        with contextlib.suppress(Exception):
            kc.stop_channels()
    try:
        if km.has_kernel and km.is_alive():
            # Graceful first (PyREPL3 closes its store in do_shutdown); jupyter_client
            # kills the process if it is not gone after shutdown_wait_time (5 s).
            km.shutdown_kernel(now=False)
    except Exception:  # noqa: BLE001
        with contextlib.suppress(Exception):
            km.shutdown_kernel(now=True)
    with contextlib.suppress(Exception):
        km.cleanup_resources()


# -- one execution -------------------------------------------------------------


def run_cell(kc: BlockingKernelClient, code: str, timeout: float = CELL_TIMEOUT, stderr: list[str] | None = None) -> float:
    """Execute ``code``; return seconds until execute_reply AND iopub idle for it."""
    t0 = time.perf_counter()
    msg_id = kc.execute(code)
    deadline = time.monotonic() + timeout
    reply = None
    while reply is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"no execute_reply for {code!r} within {timeout:g}s")
        try:
            msg = kc.get_shell_msg(timeout=remaining)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_reply":
            reply = msg
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"no iopub idle for {code!r} within {timeout:g}s")
        try:
            msg = kc.get_iopub_msg(timeout=remaining)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status" and msg["content"].get("execution_state") == "idle":
            break
        if kind == "stream" and msg["content"].get("name") == "stderr" and stderr is not None:
            stderr.append(msg["content"].get("text", ""))
    elapsed = time.perf_counter() - t0
    content = reply["content"]
    if content.get("status") != "ok":
        raise BenchError(f"{code!r} failed: {content.get('ename')}: {content.get('evalue')}")
    return elapsed


def count_execs(home: Path, session: str) -> dict[str, int]:
    """exec:<msg_id> promises of ``session`` by state (read-only; safe while a kernel runs)."""
    path = home / "store.sqlite3"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT state, count(*) FROM promises WHERE session = ? AND kind = 'exec' GROUP BY state",
            (session,),
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the finally blocks shut the kernels down."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def show_last_log(kernels: Kernels) -> None:
    """On failure: print the tail of the last kernel's output (before the temp dir goes)."""
    if not kernels.logs:
        return
    log = kernels.logs[-1]
    with contextlib.suppress(OSError):
        tail = log.read_text(errors="replace").splitlines()[-30:]
        print(f"--- last kernel output ({log.name}) ---", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)


def round_robin(clients: dict[str, BlockingKernelClient], codes: list[str], n: int, block: int) -> dict[str, list[float]]:
    """``n`` timed cells of each ``codes`` (in turn) per kernel, kernels alternating in blocks; ms by kernel."""
    out: dict[str, list[float]] = {name: [] for name in clients}
    done = 0
    while done < n:
        k = min(block, n - done)
        for name, kc in clients.items():
            out[name] += [run_cell(kc, codes[(done + j) % len(codes)]) * 1000 for j in range(k)]
        done += k
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="timed executions of each code per kernel (default 500; 40 with --small)")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up executions per kernel (default 20)")
    ap.add_argument("--history", type=int, default=None, help="real cells run in each kernel between the two measurements (default 5520; 150 with --small)")
    ap.add_argument("--block", type=int, default=25, help="executions per kernel per round-robin turn (default 25)")
    ap.add_argument("--small", "--quick", action="store_true", help="CI size")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/_report.py)")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (40 if args.small else 500)
    history = args.history if args.history is not None else (150 if args.small else 5520)
    if n < 1 or args.block < 1 or history < 0 or args.warmup < 0:
        ap.error("--n and --block must be >= 1, --history and --warmup >= 0")
    window = max(min(100, history // 2), 1)
    session = f"bench-{uuid.uuid4().hex[:8]}"
    load_before = load()
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_exit())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pyrepl3-bench-")))
        kernels = Kernels({"PYREPL3_SESSION": session}, tmp)
        stack.callback(kernels.stop_all)
        stack.push(lambda et, ev, tb: show_last_log(kernels) if et is not None and issubclass(et, Exception) else None)
        home = tmp / "home"
        clients = {name: kernels.start(name, {"PYREPL3_HOME": str(home), "IPYTHONDIR": str(tmp / f"ipython-{name}")})[1]
                   for name in (IPYKERNEL, PYREPL3)}
        for kc in clients.values():
            for i in range(args.warmup):
                run_cell(kc, ("pass", "1+1")[i % 2])
        progress(f"bench_core: [1/3] pass and 1+1, {n} each per kernel")
        trivial = round_robin(clients, ["pass"], n, args.block)
        before = round_robin(clients, ["1+1"], n, args.block)
        progress(f"bench_core: [2/3] history: {history} real cells per kernel")
        t0 = time.perf_counter()
        hist: dict[str, list[float]] = {name: [] for name in clients}
        done = 0
        while done < history:
            k = min(args.block, history - done)
            for name, kc in clients.items():
                hist[name] += [run_cell(kc, HISTORY[(done + j) % len(HISTORY)].format(i=done + j)) * 1000 for j in range(k)]
            done += k
        progress(f"bench_core: history built in {time.perf_counter() - t0:.0f}s; [3/3] 1+1 after it")
        after = round_robin(clients, ["1+1"], n, args.block)
        kernels.stop_all()
        expected = args.warmup + 3 * n + history
        stored = count_execs(home, session)
        if stored.get("resolved", 0) != expected or len(stored) != 1:
            raise BenchError(f"pyrepl3 store: {stored} exec promises, expected {expected} resolved")

    ipy, ours = trivial[IPYKERNEL], trivial[PYREPL3]
    a99, b99 = quantile(ipy, 99, 100), quantile(ours, 99, 100)
    z, h = statistics.median(before[PYREPL3]), statistics.median(after[PYREPL3])
    flat = max(FLAT_ABS_MS, FLAT_REL * z)
    hist_ipy, hist_ours = statistics.median(hist[IPYKERNEL][-window:]), statistics.median(hist[PYREPL3][-window:])
    rows = [
        versus("trivial cell (`pass`) round trip", "trivial", ipy, ours,
               target=f"<= ipykernel + {TRIVIAL_PLUS_MS:g} ms median, + {TRIVIAL_P99_PLUS_MS:g} ms p99",
               met=statistics.median(ours) <= statistics.median(ipy) + TRIVIAL_PLUS_MS and b99 <= a99 + TRIVIAL_P99_PLUS_MS,
               note=f"p99 {a99:.2f} vs {b99:.2f} ms"),
        versus("`1+1`, a new session", None, before[IPYKERNEL], before[PYREPL3]),
        versus(f"`1+1` after {history:,} real cells in the same session", "history", after[IPYKERNEL], after[PYREPL3],
               target=f"flat: <= its `1+1` before the history + {flat:.2f} ms", met=h - z <= flat,
               note=f"pyrepl3 {z:.2f} -> {h:.2f} ms, ipykernel {statistics.median(before[IPYKERNEL]):.2f} -> "
                    f"{statistics.median(after[IPYKERNEL]):.2f} ms"),
        versus(f"history cells, first {window}", None, hist[IPYKERNEL][:window], hist[PYREPL3][:window]),
        versus(f"history cells, last {window} of {history:,}", None, hist[IPYKERNEL][-window:], hist[PYREPL3][-window:],
               note=f"pyrepl3 {statistics.median(hist[PYREPL3][:window]):.2f} -> {hist_ours:.2f} ms, "
                    f"ipykernel {statistics.median(hist[IPYKERNEL][:window]):.2f} -> {hist_ipy:.2f} ms"),
    ]
    header = (f"{n} timed cells of each code per kernel (warm-up {args.warmup}, round-robin blocks of {args.block}), "
              f"history of {history:,} real cells in each measured kernel")
    report = Report("bench_core", args.small, header, load_before, rows,
                    [f"pyrepl3 stored every cell: {expected} resolved exec promises"])
    return report.emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_core")
