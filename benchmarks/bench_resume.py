"""Time from kernel restart to resumed execution, after a kill -9 mid-cell.

    .venv/bin/python benchmarks/bench_resume.py [--trials 5]

Each trial: a pyrepl3 kernel runs a cell of five durable steps and stalls after
step 3; once step 3 is journaled the kernel gets SIGKILL. A new kernel for the
same session starts and runs ``%durable resume`` (and, separately, a kernel
started with ``PYREPL3_AUTO_RESUME=1`` resumes by itself). The figures are
from ``start_kernel`` of the new kernel to (a) the kernel being ready, (b) the
first step that was not finished before the crash starting (its wall-clock
stamp, written by the step), (c) the resumed execution being settled.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _report import compiled_package  # noqa: E402
from bench_core import BenchError, Kernels  # noqa: E402

CELL = """
import os, time
def step(i):
    with open({calls!r}, 'a') as f:
        f.write(f'{{i}} {{time.time()}}\\n')
    return i
for i in range(5):
    durable.run(step, i)
    if i == 2 and not os.path.exists({gate!r}):
        time.sleep(3600)
"""


def cli_state(home: Path, promise_id: str) -> str:
    cli = Path(sys.executable).parent / "pyrepl3"
    out = subprocess.run([str(cli), "--home", str(home), "show", promise_id, "--json"], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)["state"] if out.returncode == 0 else "missing"


def wait(predicate, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(0.01)


def trial(kernels: Kernels, work: Path, n: int, auto: bool) -> tuple[float, float, float]:
    home, session = work / f"home{n}", f"resume-{n}"
    calls, gate = work / f"calls{n}.txt", work / f"gate{n}"
    env = {"PYREPL3_HOME": str(home), "PYREPL3_SESSION": session}
    km, kc, _ = kernels.start("pyrepl3", env)
    msg_id = kc.execute(CELL.format(calls=str(calls), gate=str(gate)))
    wait(lambda: cli_state(home, f"exec:{msg_id}:step:3") == "resolved", what="step 3 journaled")
    os.kill(km.provisioner.process.pid, signal.SIGKILL)
    km.provisioner.process.wait(timeout=30)
    kernels.stop(km)
    gate.touch()
    t0 = time.time()
    if auto:
        env = {**env, "PYREPL3_AUTO_RESUME": "1"}
    km, kc, ready = kernels.start("pyrepl3", env)
    if not auto:
        kc.execute_interactive("%durable resume", timeout=60)
    wait(lambda: cli_state(home, f"exec:{msg_id}") == "resolved", what="the resumed execution settled")
    done = time.time() - t0
    stamps = [line.split() for line in calls.read_text().splitlines()]
    if [s[0] for s in stamps] != ["0", "1", "2", "3", "4"]:
        raise BenchError(f"steps were repeated or lost: {[s[0] for s in stamps]}")
    first_new = float(stamps[3][1]) - t0
    kernels.stop(km)
    return ready, first_new, done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-resume-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython")}, work)
    results = {}
    try:
        for mode in ("%durable resume", "PYREPL3_AUTO_RESUME=1"):
            rows = [trial(kernels, work, f"{mode[:4]}{i}", mode.startswith("PY")) for i in range(args.trials)]
            results[mode] = [statistics.median(col) for col in zip(*rows)]
    finally:
        kernels.stop_all()
    print(f"restart after kill -9 -> resumed execution (median of {args.trials}), seconds from start_kernel")
    print(f"{'how':<24}{'kernel ready':>14}{'first new step':>16}{'settled':>10}")
    for mode, (ready, first, done) in results.items():
        print(f"{mode:<24}{ready:>14.3f}{first:>16.3f}{done:>10.3f}")
    print("(steps 0-2 were journaled before the kill and were not called again in any trial)")
    return 0


if __name__ == "__main__":
    compiled_package()
    sys.exit(main())
