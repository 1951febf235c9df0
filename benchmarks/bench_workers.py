"""Remote workers (issue 13): re-delivery after a worker's SIGKILL, and throughput of a group.

    .venv/bin/python benchmarks/bench_workers.py            # 1,000 tiny tasks x 1/2/4 workers; kill trials at both leases
    .venv/bin/python benchmarks/bench_workers.py --small    # CI: 100 tasks x 1/2 workers; one kill trial per lease
    PYREPL3_TEST_PG_DSN=postgresql://... .venv/bin/python benchmarks/bench_workers.py   # on that server

Real ``pyrepl3 worker`` processes (each its own home and working directory, one
key) on Postgres (``PYREPL3_TEST_PG_DSN``, else a throwaway ``tests/pg_server.py``
server, stopped after). Calls are sealed and their task promises created
directly, as a cell's ``durable.map`` creates them (tests/remote_tasks.py); the
kernel-side round trip is measured by the ``durable.rpc`` benchmark.

* **Re-delivery**: worker A runs a call that blocks; worker B of the group is
  idle; A is SIGKILLed and the call's gate opened: the time from the kill to
  the promise settled by B, with the default lease (``pyrepl3 worker``'s
  ``--lease``) and a short one. It is between half a lease and a lease (the
  lease was last renewed at most half a lease before the kill), plus the
  engine's timer tick and B's pick-up.
* **Throughput**: ``--tasks`` calls of ``math.factorial(10)`` created at once for
  a group of 1, 2 and 4 workers (``--concurrency`` threads each); the time from
  the first create to the last promise settled, as tasks per second, beside a
  plain in-process loop of the same calls.

Figures are printed, never asserted; the machine's load is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _report import BenchError, Report, alone, guard, load, progress  # noqa: E402
from bench_hotpath import postgres_dsn, stop_postgres  # noqa: E402
from remote_tasks import RemoteTasks, WorkerProcess  # noqa: E402

from kernel.durable.calls import seal_call  # noqa: E402
from kernel.durable.worker import DEFAULT_LEASE  # noqa: E402
from resonate.retry import Never  # noqa: E402

KEY = "bench-workers-" + uuid.uuid4().hex
SHORT_LEASE = 2.0
#: Task promises created at once by the client.
CREATORS = 4


def blocking(gate: Path):  # noqa: ANN201 - sent by value
    def wait_for_gate() -> str:
        import time as _time
        from pathlib import Path as _Path

        while not _Path(gate).exists():
            _time.sleep(0.02)
        return "done"

    return wait_for_gate


def redelivery(root: Path, dsn: str, lease: float) -> float:
    """Seconds from worker A's SIGKILL mid-call to the call settled by worker B."""
    group = f"bk{uuid.uuid4().hex[:8]}"
    tasks = RemoteTasks(dsn, KEY)
    gate = root / f"gate-{uuid.uuid4().hex[:6]}"
    workers = [WorkerProcess(root, dsn, KEY, group=group, name=f"a{uuid.uuid4().hex[:4]}", lease=lease)]
    try:
        a = workers[0].ready()
        pid = tasks.send(blocking(gate), group=group)
        a.wait_output(f"start    {pid}", 60)
        workers.append(WorkerProcess(root, dsn, KEY, group=group, name=f"b{uuid.uuid4().hex[:4]}", lease=lease))
        b = workers[1].ready()
        killed = time.monotonic()
        a.kill()
        gate.touch()
        record = tasks.wait(pid, timeout=lease * 3 + 60, interval=0.02)
        took = time.monotonic() - killed
        if record.state != "resolved" or tasks.body(record)["worker"] != b.name:
            raise BenchError(f"{pid}: {record.state}, not resolved by worker {b.name}")
        return took
    finally:
        for w in workers:
            w.kill()
        tasks.close()


def throughput(root: Path, dsn: str, workers: int, n: int, concurrency: int) -> float:
    """Seconds from the first of ``n`` task creates to the last promise settled, ``workers`` workers."""
    group = f"bt{uuid.uuid4().hex[:8]}"
    tasks = RemoteTasks(dsn, KEY)
    procs = [WorkerProcess(root, dsn, KEY, group=group, name=f"t{i}-{uuid.uuid4().hex[:4]}", concurrency=concurrency)
             for i in range(workers)]
    try:
        for p in procs:
            p.ready(60)
        pids = [tasks.next_id() for _ in range(n)]
        calls = [seal_call(tasks.sealer, pid, math.factorial, (10,), {}, retries=Never(), timeout=None) for pid in pids]

        async def create_all() -> None:
            gate = asyncio.Semaphore(CREATORS)  # as many as the client's pool has connections

            async def create(pid: str, call: object) -> None:
                async with gate:
                    await tasks.create(pid, call, group)

            await asyncio.gather(*(create(pid, call) for pid, call in zip(pids, calls, strict=True)))

        t0 = time.perf_counter()
        tasks._call(create_all(), timeout=300)
        states = tasks.wait_all(pids, timeout=600)
        took = time.perf_counter() - t0
        bad = [p for p, s in states.items() if s != "resolved"]
        if bad:
            raise BenchError(f"{len(bad)} of {n} calls not resolved (first: {bad[0]} {states[bad[0]]})")
        ran = [len(p.lines("done")) for p in procs]
        progress(f"  {workers} worker(s): {n} calls in {took:.2f}s; per worker {ran}")
        return took
    finally:
        for p in procs:
            p.kill()
        tasks.close()


def plain(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        math.factorial(10)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the CI size")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per throughput run (default 1000, small 100)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker (default 4)")
    args = parser.parse_args()
    n = args.tasks or (100 if args.small else 1000)
    groups = (1, 2) if args.small else (1, 2, 4)
    kill_trials = {SHORT_LEASE: 1 if args.small else 3, DEFAULT_LEASE: 1 if args.small else 2}
    before = load()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        root = Path(tmp)
        dsn, source = postgres_dsn(root)
        if dsn is None:
            raise BenchError(f"no Postgres: {source}")
        try:
            rows = []
            for lease, trials in kill_trials.items():
                progress(f"re-delivery after SIGKILL, lease {lease:g}s: {trials} trial(s)")
                samples = [redelivery(root, dsn, lease) for _ in range(trials)]
                rows.append(alone(f"SIGKILL of a worker mid-call -> settled by another (lease {lease:g}s)", None, samples,
                                  unit="s", target=f"<= lease ({lease:g} s) + 1 s", met=statistics.median(samples) <= lease + 1,
                                  note="default lease" if lease == DEFAULT_LEASE else "short lease"))
            base = plain(n)
            for workers in groups:
                progress(f"throughput: {n} tiny calls, {workers} worker(s) x {args.concurrency} threads")
                took = throughput(root, dsn, workers, n, args.concurrency)
                rows.append(alone(f"{n} tiny calls (math.factorial(10)), {workers} worker(s) x {args.concurrency} threads", None,
                                  [n / took], unit="calls/s",
                                  note=f"{took:.2f} s in all; plain in-process loop: {n / base:,.0f} calls/s"))
        finally:
            if source.startswith("a throwaway"):
                stop_postgres()
    report = Report("bench_workers", args.small,
                    f"remote workers on Postgres ({source}): re-delivery after SIGKILL; throughput of 1/2/4 workers", before, rows)
    report.notes.append("re-delivery: between half a lease and a lease after the kill (the lease is renewed every half lease)")
    report.notes.append("throughput: task promises created directly (no kernel); each worker claims only as many tasks as it has threads")
    return report.emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_workers")
