"""The benchmarks run at a small size in CI (figures are printed, not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import SCRUBBED

ROOT = Path(__file__).parent.parent


def run_small(script: str) -> str:
    """Run ``benchmarks/<script> --small`` (outside this test's PyREPL3 settings);
    its stdout, which is printed. It must exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--small"],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    return done.stdout


def test_checkpoint_benchmark_small() -> None:
    out = run_small("bench_checkpoint.py")
    # The benchmark itself checks every restored value after the kill -9.
    assert "restore after kill -9" in out and "store on disk" in out


def test_start_benchmark_small() -> None:
    out = run_small("bench_start.py")
    # The benchmark itself checks every restored value and that the kernel reported the restore.
    assert "empty store: ready" in out and "with checkpoint: first execute_reply" in out


def test_frames_benchmark_small() -> None:
    out = run_small("bench_frames.py")
    # The benchmark itself checks every frame's value; the kernel logs what its checkpoint pickled.
    assert "a cell changing one of 20 DataFrames" in out
    assert "checkpoint of the changing cell pickled: [df7]\n" in out, out


def test_steps_benchmark_small() -> None:
    out = run_small("bench_steps.py")
    # The benchmark's cell checks that get_checkpoint returns the newest of the versions it wrote.
    assert "[embedded] durable.run step, trivial fn" in out and "raw sqlite3 insert+commit" in out
    assert "[embedded] durable.checkpoint, last 100 of 200" in out


def test_listings_benchmark_small() -> None:
    out = run_small("bench_listings.py")
    # The benchmark itself checks that each listing holds every execution.
    assert "executions (catalog), store holding 300 executions" in out and "sessions (catalog)" in out


def test_hotpath_benchmark_small() -> None:
    out = run_small("bench_hotpath.py")
    # The benchmark's cell checks that get_checkpoint returns the newest of the versions it wrote.
    assert "trivial cell `pass`: pyrepl3 embedded" in out and "kernel CPU per trivial cell: pyrepl3 embedded" in out
    assert "durable.run step, trivial fn" in out and "durable.checkpoint, a new name each call" in out
    assert "`x = 1` next to 20 MB of arrays: pyrepl3 embedded" in out
    # The Postgres row is there, or says why not.
    assert "trivial cell `pass`: pyrepl3 postgres" in out or "Postgres row skipped: " in out
