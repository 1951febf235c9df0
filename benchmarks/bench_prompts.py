"""Latency from an out-of-band answer to the waiting cell continuing.

    .venv/bin/python benchmarks/bench_prompts.py [--n 30]

A headless pyrepl3 kernel runs ``input()`` N times; each prompt is answered
through the Python API (``kernel.durable.hitl.answer``) and, separately, through the
``pyrepl3 answer`` command. The cell records ``time.time()`` the moment
``input()`` returns; the figure is that minus the moment the answer was given.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import KernelManager

sys.path.insert(0, str(Path(__file__).parent))
from _report import compiled_package  # noqa: E402

from kernel.durable import hitl  # noqa: E402

CELL = "x = input('q? '); import time as _t; print(repr(_t.time()))"


def wait_pending(home: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = hitl.pending(home)
        if rows:
            return rows[0]["id"]
        time.sleep(0.005)
    raise TimeoutError("no pending prompt")


def continued_at(kc, msg_id: str) -> float:
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            return float(msg["content"]["text"].strip())


def measure(kc, home: Path, n: int, via_cli: bool) -> list[float]:
    cli = Path(sys.executable).parent / "pyrepl3"
    out = []
    for _ in range(n):
        msg_id = kc.execute(CELL, allow_stdin=False)
        pid = wait_pending(home)
        t0 = time.time()
        if via_cli:
            subprocess.run([str(cli), "--home", str(home), "answer", pid, "v"], check=True, capture_output=True, timeout=30)
        else:
            hitl.answer(pid, "v", home)
        out.append((continued_at(kc, msg_id) - t0) * 1000)
        kc.get_shell_msg(timeout=30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-"))
    env = {**os.environ, "PYREPL3_HOME": str(home), "PYREPL3_SESSION": "bench-prompts"}
    km = KernelManager(kernel_name="pyrepl3")
    km.start_kernel(env=env)
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        api = measure(kc, home, args.n, via_cli=False)
        cli = measure(kc, home, max(args.n // 3, 3), via_cli=True)
    finally:
        km.shutdown_kernel(now=True)
    print("out-of-band answer -> cell continues (ms)")
    print(f"{'path':<28}{'n':>4}{'median':>10}{'p90':>10}{'max':>10}")
    for name, xs in (("python API (kernel.durable.hitl)", api), ("pyrepl3 answer (CLI)", cli)):
        xs = sorted(xs)
        print(f"{name:<28}{len(xs):>4}{statistics.median(xs):>10.1f}{xs[int(len(xs) * 0.9) - 1]:>10.1f}{xs[-1]:>10.1f}")
    print("(the CLI figure includes starting a Python process)")


if __name__ == "__main__":
    compiled_package()
    main()
