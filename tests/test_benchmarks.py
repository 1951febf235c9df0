"""The checkpoint, start and frames benchmarks run at a small size in CI (figures are printed, not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness import SCRUBBED

ROOT = Path(__file__).parent.parent


def test_checkpoint_benchmark_small() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_checkpoint.py"), "--small"],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The benchmark itself checks every restored value after the kill -9.
    assert "restore after kill -9" in done.stdout and "store on disk" in done.stdout
    print(done.stdout)


def test_start_benchmark_small() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_start.py"), "--small"],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The benchmark itself checks every restored value and that the kernel reported the restore.
    assert "empty store: ready" in done.stdout and "with checkpoint: first execute_reply" in done.stdout
    print(done.stdout)


def test_frames_benchmark_small() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_frames.py"), "--small"],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The benchmark itself checks every frame's value; the kernel logs what its checkpoint pickled.
    assert "a cell changing one of 20 DataFrames" in done.stdout
    assert "checkpoint of the changing cell pickled: [df7]\n" in done.stdout, done.stdout
    print(done.stdout)


def test_steps_benchmark_small() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_steps.py"), "--small"],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The benchmark's cell checks that get_checkpoint returns the newest of the versions it wrote.
    assert "[embedded] durable.run step, trivial fn" in done.stdout and "raw sqlite3 insert+commit" in done.stdout
    assert "[embedded] durable.checkpoint, last 100 of 200" in done.stdout


def test_listings_benchmark_small() -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_listings.py"), "--small"],
        capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The benchmark itself checks that each listing holds every execution.
    assert "executions (catalog), store holding 300 executions" in done.stdout and "sessions (catalog)" in done.stdout
    print(done.stdout)
