"""Where a trivial cell's time goes: PyREPL3 against ipykernel, stage by stage.

    .venv/bin/python benchmarks/profile_cell.py [--n 1000] [--code pass]

Runs each kernel through ``benchmarks/_timed_kernel.py`` (the real kernel
classes with perf_counter timers wrapped around a few methods in the kernel
process; kernel/ is not modified), executes ``--n`` cells after a warm-up, and
prints the median (and mean) milliseconds per cell of:

* the client round trip and its parts: client send -> do_execute start,
  do_execute, do_execute end -> iopub idle seen by the client;
* for PyREPL3, the stages of a cell (``STAGES``: the submit, the hand-off and
  its started record, the IPython execution, the end of the cell: capture and
  the one write of checkpoint and settle, or on an engine without batches the
  checkpoint's write and the wait for the task's fulfill), by timing marks the
  kernel process records; a stage whose methods the code no longer has is left
  out, not a ``KeyError``;
* the runtime thread's work per cell: event-loop busy time, store requests by
  kind (``EmbeddedStore.apply``), SQLite statements, ServerState.apply.

The timers cost a few microseconds each, so absolute numbers are a little
higher than ``bench_core.py``'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import BenchError, Kernels, run_cell  # noqa: E402

LAUNCHER = Path(__file__).resolve().parent / "_timed_kernel.py"


class TimedKernels(Kernels):
    """``Kernels`` whose kernelspecs launch ``_timed_kernel.py``."""

    def __init__(self, base_env: dict[str, str], log_dir: Path) -> None:
        super().__init__(base_env, log_dir)
        kdir = log_dir / "kernels" / "timed"
        kdir.mkdir(parents=True)
        (kdir / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, str(LAUNCHER), "-f", "{connection_file}"],
                    "display_name": "timed",
                    "language": "python",
                    "interrupt_mode": "signal",
                }
            )
        )
        self.ksm = KernelSpecManager(kernel_dirs=[str(log_dir / "kernels")])

    def _manager(self, name: str) -> KernelManager:
        return KernelManager(kernel_name="timed", kernel_spec_manager=self.ksm)


KINDS = ("ipykernel", "pyrepl3")


def run(n: int, warmup: int, code: str, block: int, tmp: Path) -> dict[str, dict[str, list[float]]]:
    """Run ``n`` cells on a timed ipykernel and a timed PyREPL3, alternating in
    blocks; return per-cell milliseconds by stage, per kind."""
    base = {"IPYTHONDIR": str(tmp / "ipython"), "PYREPL3_SESSION": f"profile-{uuid.uuid4().hex[:8]}"}
    kernels = TimedKernels(base, tmp)
    clients: dict[str, Any] = {}
    client_times: dict[str, dict[str, tuple[float, float]]] = {k: {} for k in KINDS}
    try:
        for kind in KINDS:
            home = tmp / f"home-{kind}"
            home.mkdir()
            env = {
                "PYREPL3_HOME": str(home),
                "PYREPL3_BENCH_KIND": kind,
                "PYREPL3_BENCH_TIMINGS": str(tmp / f"timings-{kind}.json"),
            }
            clients[kind] = kernels.start("timed", env)[1]
            for _ in range(warmup):
                run_cell(clients[kind], code)
        done = 0
        while done < n:
            k = min(block, n - done)
            for kind in KINDS:
                kc = clients[kind]
                for _ in range(k):
                    t0 = time.perf_counter()
                    msg_id = kc.execute(code)  # run_cell() hides the msg_id; the same wait, keeping it
                    _wait(kc, msg_id)
                    client_times[kind][msg_id] = (t0, time.perf_counter())
            done += k
        for kind in KINDS:
            run_cell(clients[kind], "__import__('pyrepl3_bench_timers').dump()")
    finally:
        kernels.stop_all()
    return {kind: analyse(kind, client_times[kind], tmp / f"timings-{kind}.json") for kind in KINDS}


def analyse(kind: str, client: dict[str, tuple[float, float]], timings: Path) -> dict[str, list[float]]:
    cells = json.loads(timings.read_text())
    out: dict[str, list[float]] = {}

    def put(name: str, seconds: float) -> None:
        out.setdefault(name, []).append(seconds * 1000)

    for msg_id, (t0, t1) in client.items():
        cell = cells.get(msg_id)
        if cell is None:
            raise BenchError(f"no kernel timings for {msg_id}")
        m = cell["marks"]
        spans = {k: v[0] for k, v in cell["spans"].items()}
        put("client round trip", t1 - t0)
        put("client send -> do_execute start", m["do_execute:start"] - t0)
        put("do_execute (whole)", m["do_execute:end"] - m["do_execute:start"])
        put("do_execute end -> client has reply+idle", t1 - m["do_execute:end"])
        put("  IPython do_execute (super)", m["ipython:end"] - m["ipython:start"])
        if kind == "pyrepl3":
            stages(m, put)
        for name, total in spans.items():
            put(f"[span] {name}", total)
        for name, (_, count) in cell["spans"].items():
            out.setdefault(f"[count] {name}", []).append(count)
    return out


#: PyREPL3's stages: (label, from mark, to mark). A stage whose marks the kernel did not
#: record (the code no longer has that method, or took another path) is left out.
STAGES = (
    ("  do_execute start -> submit (ExecutionParams, expect)", "do_execute:start", "main: DurableRuntime.submit:start"),
    ("  runtime.submit (create exec:)", "main: DurableRuntime.submit:start", "main: DurableRuntime.submit:end"),
    ("    submit: main call -> coroutine starts on runtime loop", "main: DurableRuntime.submit:start", "rt: DurableRuntime._submit (coroutine):start"),
    ("    submit: coroutine (promises.create -> store)", "rt: DurableRuntime._submit (coroutine):start", "rt: DurableRuntime._submit (coroutine):end"),
    ("    submit: coroutine end -> main thread resumes", "rt: DurableRuntime._submit (coroutine):end", "main: DurableRuntime.submit:end"),
    ("  dispatcher.take (hand-off and its record)", "main: CellDispatcher.take:start", "main: CellDispatcher.take:end"),
    ("    hand-off: take -> dispatch runs (task msg, task.acquire, durable_execute)", "main: CellDispatcher.take:start", "rt: CellDispatcher.dispatch:start"),
    ("    started record (coroutine on the loop)", "rt: DurableRuntime._record_start (coroutine):start", "rt: DurableRuntime._record_start (coroutine):end"),
    ("    started record -> main thread resumes", "rt: DurableRuntime._record_start (coroutine):end", "main: CellDispatcher.take:end"),
    ("    runtime.record_start (main thread)", "main: DurableRuntime.record_start:start", "main: DurableRuntime.record_start:end"),
    ("  take end -> IPython start (recorder.begin)", "main: CellDispatcher.take:end", "ipython:start"),
    ("  IPython end -> settle (flush, recorder.end, outcome)", "ipython:end", "main: CellSettler.settle:start"),
    ("  settler.settle (checkpoint and outcome)", "main: CellSettler.settle:start", "main: CellSettler.settle:end"),
    ("    capture (outcome blob, namespace, ckpt promise)", "main: CellSettler._checkpoint:start", "main: CellSettler._checkpoint:end"),
    ("    runtime.store_resolved (ckpt: create + resolve)", "main: DurableRuntime.store_resolved:start", "main: DurableRuntime.store_resolved:end"),
    ("    runtime.settle_cell (ckpt: and exec: as one unit)", "main: DurableRuntime.settle_cell:start", "main: DurableRuntime.settle_cell:end"),
    ("    runtime.confirm_settled (wait for the task's fulfill)", "main: DurableRuntime.confirm_settled:start", "main: DurableRuntime.confirm_settled:end"),
    ("  settle end -> do_execute end", "main: CellSettler.settle:end", "do_execute:end"),
)


def stages(marks: dict[str, float], put: Any) -> None:
    for label, a, b in STAGES:
        if a in marks and b in marks:
            put(label, marks[b] - marks[a])


def _wait(kc: Any, msg_id: str, timeout: float = 30.0) -> None:
    import queue

    deadline = time.monotonic() + timeout
    got_reply = False
    while not got_reply:
        if time.monotonic() > deadline:
            raise BenchError("no execute_reply")
        try:
            msg = kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            continue
        got_reply = msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_reply"
    while True:
        if time.monotonic() > deadline:
            raise BenchError("no iopub idle")
        try:
            msg = kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            continue
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"].get("execution_state") == "idle"
        ):
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--code", default="pass")
    ap.add_argument("--block", type=int, default=25, help="cells per kernel per turn (the two kernels alternate)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyrepl3-profile-") as d:
        tmp = Path(d)
        res = run(args.n, args.warmup, args.code, args.block, tmp)
    names = list(dict.fromkeys([*res["ipykernel"], *res["pyrepl3"]]))
    print(f"per-cell ms, {args.n} cells of {args.code!r} per kernel after {args.warmup} warm-up, kernels alternating in blocks of {args.block} (median / mean)")
    w = max(len(x) for x in names)
    print(f"{'stage':<{w}} | {'ipykernel':>17} | {'pyrepl3':>17}")
    for name in names:
        cols = []
        for kind in ("ipykernel", "pyrepl3"):
            v = res[kind].get(name)
            if not v:
                cols.append(f"{'-':>17}")
            elif name.startswith("[count]"):
                cols.append(f"{statistics.median(v):>7.1f} / {statistics.fmean(v):7.2f}")
            else:
                cols.append(f"{statistics.median(v):7.3f} / {statistics.fmean(v):7.3f}")
        print(f"{name:<{w}} | {cols[0]} | {cols[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
