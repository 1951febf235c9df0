"""Core overhead benchmark: PyREPL3 against plain ipykernel, measured in one run.

    .venv/bin/python benchmarks/bench_core.py            # full run (N=500, history=10000, 5 starts)
    .venv/bin/python benchmarks/bench_core.py --quick    # CI smoke (N=50, history=500, 2 starts)

What it measures, each for ipykernel (kernelspec ``python3``) and PyREPL3
(kernelspec ``pyrepl3``):

* round trip of a trivial cell (``pass`` and ``1+1``): from ``kc.execute`` until
  the ``execute_reply`` is received *and* iopub has reported ``idle`` for that
  msg_id; median and p90 over ``--n`` executions after ``--warmup`` executions;
* the same for PyREPL3 on a store that already holds ``--history`` resolved
  ``exec:<msg_id>`` promises of the same session (prefilled, see ``--prefill``);
* kernel start: from ``start_kernel`` until ``wait_for_ready`` returns, median
  over ``--starts`` starts (ipykernel and PyREPL3 on an empty store
  interleaved; then PyREPL3 on the prefilled store).

Targets checked in the final table: at most +2 ms per trivial cell over
ipykernel; flat with history (median with history minus median without it at
most max(0.5 ms, 10 %)); kernel start at most 1.5x ipykernel.

Round trips are measured on three kernels running side by side (ipykernel,
PyREPL3 on an empty store, PyREPL3 on the prefilled store), round-robin in
blocks of ``--block`` executions, so that load from other work on the machine
hits all three alike; the warm-up cycles through the measured codes, so
one-time costs (the first recorded output) stay out of the figures. Starts
are timed one kernel at a time, after one untimed start of each. Every
PyREPL3 kernel gets a temporary PYREPL3_HOME and a fixed PYREPL3_SESSION;
kernels use a temporary IPYTHONDIR so none reads the user's profile (the three
measured side by side get one each). The script checks that PyREPL3 really
stored every measured cell (so a silently disabled durability layer cannot pass
for a fast one). Exit status is 0 unless something failed (2); with
``--strict`` a missed target exits 1 as well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

IPYKERNEL = "python3"
PYREPL3 = "pyrepl3"

#: Targets (see the module docstring).
MAX_CELL_OVERHEAD_MS = 2.0
MAX_START_RATIO = 1.5
FLAT_ABS_MS = 0.5
FLAT_REL = 0.10

CELL_TIMEOUT = 30.0  # seconds, one execution (reply + idle)
START_TIMEOUT = 60.0  # seconds, wait_for_ready
PREFILL_CELL_TIMEOUT = 30.0


class BenchError(RuntimeError):
    pass


# -- statistics ----------------------------------------------------------------


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


@dataclass
class Sample:
    label: str
    values_ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values_ms)

    @property
    def p90(self) -> float:
        return p90(self.values_ms)

    def line(self) -> str:
        v = self.values_ms
        return (
            f"{self.label:<44} n={len(v):<5} median={self.median:7.3f} ms  p90={self.p90:7.3f} ms  "
            f"min={min(v):7.3f}  max={max(v):8.3f}"
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


@dataclass
class Subject:
    """One kernel under measurement."""

    label: str
    kc: BlockingKernelClient
    stderr: list[str] = field(default_factory=list)
    samples: dict[str, Sample] = field(default_factory=dict)


def measure(subjects: list[Subject], codes: list[str], n: int, warmup: int, block: int) -> None:
    """Warm every kernel up, then time ``n`` executions of each code per kernel,
    round-robin in blocks of ``block`` so that drift in machine load hits all alike."""
    for sub in subjects:
        for i in range(warmup):  # the measured codes in turn, so one-time costs (first output) are paid here
            run_cell(sub.kc, codes[i % len(codes)], stderr=sub.stderr)
    for code in codes:
        for sub in subjects:
            sub.samples[code] = Sample(f"{sub.label}: {code}")
        done = 0
        while done < n:
            k = min(block, n - done)
            for sub in subjects:
                values = sub.samples[code].values_ms
                for _ in range(k):
                    values.append(run_cell(sub.kc, code, stderr=sub.stderr) * 1000)
            done += k
        for sub in subjects:
            print("  " + sub.samples[code].line(), flush=True)
    for sub in subjects:
        notices = [t for t in sub.stderr if "PyREPL3" in t]
        if notices:
            raise BenchError(f"{sub.label}: the kernel printed PyREPL3 notices: {''.join(notices)!r}")


# -- the store -------------------------------------------------------------------


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


def prefill_store(home: Path, session: str, count: int) -> float:
    """Create ``count`` resolved exec promises by driving the store layer in-process.

    Same path a cell takes in kernel/kernel.py (dispatcher.expect -> runtime.submit
    -> ticket.result -> outcome.set_result(CellResult) -> wait_settled), minus
    IPython: the engine, the state machine and the SQLite writes are the real ones.
    """
    from kernel.core.locations import store_path
    from kernel.core.models import CellResult, ExecutionParams, Timings
    from kernel.durable.dispatcher import CellDispatcher
    from kernel.durable.runtime import DurableRuntime
    from kernel.store.embedded.store import EmbeddedStore
    from kernel.store.embedded.locks import FlockSessionLock

    t0 = time.perf_counter()
    lock = FlockSessionLock(home, session).acquire()
    store = runtime = None
    try:
        pid = uuid.uuid4().hex
        store = EmbeddedStore(store_path(home), session, pid=pid).open()
        dispatcher = CellDispatcher()
        runtime = DurableRuntime(store, session=session, dispatcher=dispatcher, pid=pid).start()
        for i in range(1, count + 1):
            msg_id = uuid.uuid4().hex
            eid = f"exec:{msg_id}"
            params = ExecutionParams(
                session=session,
                msg_id=msg_id,
                code="pass",
                execution_count=i,
                kernel_pid=os.getpid(),
                nonce=uuid.uuid4().hex,
                submitted_at=time.time(),
            )
            ticket = dispatcher.expect(eid)
            record = runtime.submit(params)
            if record.state != "pending":
                raise BenchError(f"prefill: {eid} was created as {record.state}")
            handoff = ticket.result(timeout=PREFILL_CELL_TIMEOUT)
            now = time.time()
            handoff.outcome.set_result(
                CellResult(
                    execution_id=eid,
                    execution_count=i,
                    timings=Timings(started=now, finished=now, duration_ms=0.0),
                )
            )
            settled = runtime.wait_settled(eid, timeout=PREFILL_CELL_TIMEOUT)
            if settled.state != "resolved":
                raise BenchError(f"prefill: {eid} ended as {settled.state}")
    finally:
        if runtime is not None:
            runtime.stop()
        if store is not None:
            store.close()
        lock.release()
    return time.perf_counter() - t0


def prefill_kernel(kernels: Kernels, env: dict[str, str], count: int) -> float:
    """Create ``count`` resolved exec promises by running ``pass`` cells through a PyREPL3 kernel."""
    t0 = time.perf_counter()
    km, kc, _ = kernels.start(PYREPL3, env)
    try:
        for _ in range(count):
            run_cell(kc, "pass")
    finally:
        kernels.stop(km)
    return time.perf_counter() - t0


# -- the run ---------------------------------------------------------------------


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


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fmt_ms(v: float) -> str:
    return f"{v:.3f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="executions per measured cell (default 500; 50 with --quick)")
    ap.add_argument("--warmup", type=int, default=20, help="warm-up executions per kernel (default 20)")
    ap.add_argument("--history", type=int, default=None, help="earlier executions in the store (default 10000; 500 with --quick)")
    ap.add_argument("--starts", type=int, default=None, help="kernel starts per kernel (default 5; 2 with --quick)")
    ap.add_argument(
        "--prefill",
        choices=("store", "kernel"),
        default="store",
        help="how to create the history: 'store' drives kernel.store/kernel.durable.runtime in-process (fast, default); "
        "'kernel' runs `pass` cells through a real PyREPL3 kernel",
    )
    ap.add_argument("--block", type=int, default=25, help="executions per kernel per round-robin turn (default 25)")
    ap.add_argument("--quick", action="store_true", help="CI smoke: N=50, history=500, 2 starts")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (50 if args.quick else 500)
    history = args.history if args.history is not None else (500 if args.quick else 10_000)
    starts = args.starts if args.starts is not None else (2 if args.quick else 5)
    if n < 1 or starts < 1 or args.block < 1 or history < 0 or args.warmup < 0:
        ap.error("--n, --starts and --block must be >= 1, --history and --warmup >= 0")

    codes = ["pass", "1+1"]
    session = f"bench-{uuid.uuid4().hex[:8]}"
    t_run = time.perf_counter()
    print(f"bench_core: N={n} warmup={args.warmup} history={history} starts={starts} prefill={args.prefill} block={args.block}")
    print(
        f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs, "
        f"load average {_load()} (other work on the machine shows up as noise)"
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_as_exit())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pyrepl3-bench-")))
        base_env = {"IPYTHONDIR": str(tmp / "ipython"), "PYREPL3_SESSION": session}
        kernels = Kernels(base_env, tmp)
        stack.callback(kernels.stop_all)
        stack.push(lambda et, ev, tb: show_last_log(kernels) if et is not None and issubclass(et, Exception) else None)

        def home_env(name: str) -> tuple[Path, dict[str, str]]:
            home = tmp / name
            home.mkdir()
            return home, {"PYREPL3_HOME": str(home)}

        # 1. kernel start, interleaved; every PyREPL3 start on a fresh, empty home.
        print(f"\n[1/4] kernel start x{starts} each, interleaved (start_kernel -> wait_for_ready)")
        start_s = {
            IPYKERNEL: Sample("start ipykernel"),
            PYREPL3: Sample("start pyrepl3 (empty store)"),
            "history": Sample(f"start pyrepl3 ({history} history)"),
        }
        for name in (IPYKERNEL, PYREPL3):  # untimed: creates the IPython profile, warms the page cache
            km = kernels.start(name, home_env(f"start-{name}-warm")[1])[0]
            kernels.stop(km)
        for i in range(starts):
            for name in (IPYKERNEL, PYREPL3):
                km, kc, elapsed = kernels.start(name, home_env(f"start-{name}-{i}")[1])
                start_s[name].values_ms.append(elapsed * 1000)
                run_cell(kc, "pass")  # it really executes
                kernels.stop(km)
        for name in (IPYKERNEL, PYREPL3):
            print("  " + start_s[name].line(), flush=True)

        # 2. the history.
        print(f"\n[2/4] prefill: {history} earlier executions ({args.prefill})")
        homeh, envh = home_env("pyrepl3-history")
        if history:
            if args.prefill == "store":
                took = prefill_store(homeh, session, history)
                how = (
                    "in-process: kernel.store.embedded.store.EmbeddedStore + kernel.durable.runtime.DurableRuntime on the same "
                    "store file and session; each exec promise created, handed off and resolved as kernel.py does"
                )
            else:
                took = prefill_kernel(kernels, envh, history)
                how = "through a real PyREPL3 kernel, one `pass` cell at a time"
            pre = count_execs(homeh, session)
            if pre.get("resolved", 0) != history:
                raise BenchError(f"prefill left {pre}, expected {history} resolved exec promises")
            size = (homeh / "store.sqlite3").stat().st_size
            print(
                f"  {history} resolved exec promises in {took:.1f}s ({took / history * 1000:.2f} ms each), "
                f"store {size / 1e6:.1f} MB; {how}"
            )
        else:
            print("  nothing to do (--history 0)")

        # 3. PyREPL3 start on the prefilled store (same session, one after the other).
        print(f"\n[3/4] pyrepl3 start on the store with {history} earlier executions x{starts}")
        for _ in range(starts):
            km, kc, elapsed = kernels.start(PYREPL3, envh)
            start_s["history"].values_ms.append(elapsed * 1000)
            kernels.stop(km)
        print("  " + start_s["history"].line(), flush=True)

        # 4. round trips: the three kernels side by side, measured round-robin.
        print(f"\n[4/4] round trips (warmup {args.warmup}, N={n}, round-robin blocks of {args.block})")
        home0, env0 = home_env("pyrepl3-empty")
        subjects = []
        for i, (label, name, extra) in enumerate(
            (
                ("ipykernel", IPYKERNEL, home_env("ipykernel")[1]),
                ("pyrepl3 (empty store)", PYREPL3, env0),
                (f"pyrepl3 ({history} history)", PYREPL3, envh),
            )
        ):
            # each its own IPython dir, so their history writers do not share one SQLite file
            kc = kernels.start(name, {**extra, "IPYTHONDIR": str(tmp / f"ipython-{i}")})[1]
            subjects.append(Subject(label, kc))
        measure(subjects, codes, n, args.warmup, args.block)
        kernels.stop_all()
        ipy, rep0, reph = (sub.samples for sub in subjects)
        per_kernel = args.warmup + n * len(codes)
        for home, expected in ((home0, per_kernel), (homeh, history + per_kernel)):
            stored = count_execs(home, session)
            if stored.get("resolved", 0) != expected or len(stored) != 1:
                raise BenchError(f"pyrepl3 store {home.name}: {stored} exec promises, expected {expected} resolved")
            print(f"  store check {home.name}: {expected} resolved exec promises, as expected")

    # -- the table ------------------------------------------------------------------
    rows: list[tuple[str, str, str, str, str]] = []
    verdicts: list[bool] = []

    def verdict(ok: bool, text: str) -> str:
        verdicts.append(ok)
        return f"{'PASS' if ok else 'MISS'} ({text})"

    for code in codes:
        for stat in ("median", "p90"):
            a = getattr(ipy[code], stat)
            b = getattr(rep0[code], stat)
            target = verdict(b - a <= MAX_CELL_OVERHEAD_MS, f"<= +{MAX_CELL_OVERHEAD_MS:g} ms") if stat == "median" else ""
            rows.append((f"`{code}` round trip {stat}, empty store", fmt_ms(a), fmt_ms(b), f"{b - a:+.3f} ms  ({b / a:.2f}x)", target))
    for code in codes:
        for stat in ("median", "p90"):
            a = getattr(ipy[code], stat)
            b = getattr(reph[code], stat)
            target = verdict(b - a <= MAX_CELL_OVERHEAD_MS, f"<= +{MAX_CELL_OVERHEAD_MS:g} ms") if stat == "median" else ""
            rows.append((f"`{code}` round trip {stat}, {history} history", fmt_ms(a), fmt_ms(b), f"{b - a:+.3f} ms  ({b / a:.2f}x)", target))
    for code in codes:
        z, h = rep0[code].median, reph[code].median
        limit = max(FLAT_ABS_MS, FLAT_REL * z)
        rows.append(
            (
                f"pyrepl3 `{code}` median: {history} history vs empty",
                "-",
                f"{fmt_ms(z)} -> {fmt_ms(h)}",
                f"{h - z:+.3f} ms  ({h / z:.2f}x)",
                verdict(h - z <= limit, f"flat: <= +{limit:.2f} ms"),
            )
        )
    a = start_s[IPYKERNEL].median
    for key, what in ((PYREPL3, "empty store"), ("history", f"{history} history")):
        b = start_s[key].median
        rows.append(
            (
                f"kernel start median (x{starts}), {what}",
                f"{a:.1f} ms",
                f"{b:.1f} ms",
                f"{b - a:+.1f} ms  ({b / a:.2f}x)",
                verdict(b / a <= MAX_START_RATIO, f"<= {MAX_START_RATIO:g}x"),
            )
        )

    header = ("metric", "ipykernel", "pyrepl3", "delta / ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    sep = "-+-".join("-" * w for w in widths)
    print(f"\nload average at the end: {_load()}")
    print(f"\nResults ({time.perf_counter() - t_run:.0f}s total; N={n}, warmup={args.warmup}, history={history} via {args.prefill}, starts={starts})")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print(sep)
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    missed = verdicts.count(False)
    print(f"\ntargets: {len(verdicts) - missed}/{len(verdicts)} met")

    if args.json is not None:
        data = {
            "n": n,
            "warmup": args.warmup,
            "history": history,
            "prefill": args.prefill,
            "starts": starts,
            "samples_ms": {
                "ipykernel": {c: ipy[c].values_ms for c in codes},
                "pyrepl3_0": {c: rep0[c].values_ms for c in codes},
                f"pyrepl3_{history}": {c: reph[c].values_ms for c in codes},
                "start_ipykernel": start_s[IPYKERNEL].values_ms,
                "start_pyrepl3": start_s[PYREPL3].values_ms,
                "start_pyrepl3_history": start_s["history"].values_ms,
            },
            "table": [dict(zip(header, r)) for r in rows],
        }
        args.json.write_text(json.dumps(data, indent=1))
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_core: error: {exc}", file=sys.stderr)
        sys.exit(2)
