"""The benchmarks run at a small size in CI (figures are printed, not asserted)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import SCRUBBED

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
run_all = importlib.import_module("run_all")

#: What each benchmark on this branch fills of issue 12's table (run_all.SCRIPTS may name more).
FILLS = {
    "bench_core.py": {"trivial", "history"},
    "bench_frames.py": {"frames"},
    "bench_checkpoint.py": {"neighbour500", "restore500"},
    "bench_start.py": {"restore500"},
    "bench_steps.py": {"step", "ckpt1000"},
    "bench_listings.py": {"start5000", "listing50"},
    "bench_gc.py": {"storage"},
    "bench_restore.py": set(),
    "bench_history.py": {"history", "vars10k", "names2000"},
    "bench_hotpath.py": {"trivial", "step", "ckpt1000"},
    "bench_workers.py": set(),
    "bench_rpc.py": set(),
}


def bench_env() -> dict[str, str]:
    """The environment outside this test's PyREPL3 settings."""
    return {k: v for k, v in os.environ.items() if k not in SCRUBBED}


def run_small(script: str) -> str:
    """Run ``benchmarks/<script> --small``; its stdout, which is printed. It must exit 0.
    (For a benchmark outside run_all.SCRIPTS; those run in test_run_all_small.)"""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--small"],
        capture_output=True, text=True, env=bench_env(), timeout=300, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    return done.stdout


def run_json(script: str, timeout: float) -> dict:
    """Run ``benchmarks/<script> --small --json``; the document it prints. It must exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--small", "--json"],
        capture_output=True, text=True, env=bench_env(), timeout=timeout, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(done.stdout)


@pytest.mark.timeout(900)
def test_run_all_small() -> None:
    """One command runs every benchmark at its CI size and prints every row of issue 12's table."""
    doc = run_json("run_all.py", timeout=850)
    text = run_all.render(doc)
    print(text)
    scripts = doc["scripts"]
    assert list(scripts) == [s for s, _ in run_all.SCRIPTS]
    for script, result in scripts.items():
        if script in FILLS:
            assert result["status"] == "ok", (script, result)
        else:  # a benchmark this test does not know yet: run (with rows or, without --json, its own table), or absent
            assert (result["status"] == "missing") == (not (ROOT / "benchmarks" / script).exists()), (script, result)
            assert result["status"] in ("ok", "text", "missing"), (script, result)
        if result["status"] == "ok":
            assert len(result["load_before"]) == 3 and len(result["load_after"]) == 3 and result["small"] is True
    for script, keys in FILLS.items():
        filled = {r["key"] for r in doc["rows"] if r["source"] == script.removesuffix(".py")}
        assert keys <= filled, (script, filled)
    for r in doc["rows"]:
        assert r["met"] in (True, False, None) and r["pyrepl3_ms"] is not None, r
        assert (r["ratio"] is None) == (r["ipykernel_ms"] is None), r
    for label, _target in run_all.ISSUE_ROWS.values():
        assert label in text
    labels = {r["row"]: r for r in doc["rows"]}
    # The benchmarks check their own results (every restored value after the kill -9, each listing
    # holding every execution, get_checkpoint returning the newest version, every cell stored).
    assert any("restore after kill -9" in k for k in labels) and any("store on disk" in k for k in labels)
    assert "empty store: ready (kernel_info_reply)" in labels
    assert any(k.startswith("with checkpoint: first execute_reply") for k in labels)
    assert "[embedded] durable.run step, trivial fn" in labels and "[embedded] raw sqlite3 insert+commit (floor)" in labels
    assert "[embedded] durable.checkpoint, last 100 of 200" in labels
    assert "executions (catalog), store holding 300 executions" in labels and "sessions (catalog), store holding 300 executions" in labels
    # The kernel logs what its checkpoint pickled: the frame that changed, alone.
    frames = next(r for r in doc["rows"] if r["key"] == "frames")
    assert frames["row"].startswith("a cell changing one of 20 DataFrames")
    assert frames["note"].endswith("checkpoint of the changing cell pickled: [df7]"), frames
    # The hot path's own rows (its cell checks that get_checkpoint returns the newest version it wrote).
    assert "kernel CPU per trivial cell: pyrepl3 embedded" in labels and "`x = 1` next to 20 MB of arrays: pyrepl3 embedded" in labels
    assert any(k.startswith("durable.checkpoint, a new name each call") for k in labels)
    trivial = next(r for r in doc["rows"] if r["key"] == "trivial" and r["source"] == "bench_core")
    assert trivial["ipykernel_ms"] > 0 and trivial["n"] == 40


def test_run_all_says_what_was_not_measured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or failed benchmark leaves its figures "not measured", naming the script; nothing is made up.
    ``--from`` prints the table of a saved run."""
    doc = {
        "small": True, "machine": "test", "load_before": [1.0, 1.0, 1.0], "load_after": [1.0, 1.0, 1.0], "seconds": 1.0,
        "scripts": {
            "bench_gc.py": {"status": "missing", "error": "benchmarks/bench_gc.py is not on this branch"},
            "bench_frames.py": {"status": "failed", "error": "exit status 2", "stderr": "bench_frames failed: boom"},
        },
        "rows": [],
    }
    text = run_all.render(doc)
    storage = next(line for line in text.splitlines() if line.startswith(f"| {run_all.ISSUE_ROWS['storage'][0]} |"))
    assert "| not measured |" in storage and "bench_gc.py (missing)" in storage
    frames = next(line for line in text.splitlines() if line.startswith(f"| {run_all.ISSUE_ROWS['frames'][0]} |"))
    assert "bench_frames.py (failed)" in frames and "bench_frames failed: boom" in text
    assert f"0 met, 0 missed, 0 without a verdict, {len(run_all.ISSUE_ROWS)} of {len(run_all.ISSUE_ROWS)} figures not measured" in text
    for label, target in run_all.ISSUE_ROWS.values():  # no figure anywhere in the table
        assert f"| {label} | not measured | - | - | - | {target} | not measured |" in text
    (tmp_path / "run.json").write_text(json.dumps(doc))
    assert run_all.main(["--from", str(tmp_path / "run.json")]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_run_all_runs_a_benchmark_without_rows(tmp_path: Path) -> None:
    """A benchmark that does not take --json yet is run without it (its own table kept, no rows);
    one that fails is reported failed with its stderr."""
    (tmp_path / "bench_plain.py").write_text(
        "import argparse\nap = argparse.ArgumentParser()\nap.add_argument('--small', action='store_true')\n"
        "print('plain table, small' if ap.parse_args().small else 'plain table')\n"
    )
    (tmp_path / "bench_broken.py").write_text("import sys\nprint('half', file=sys.stderr)\nsys.exit(3)\n")
    plain = run_all.run_script("bench_plain.py", True, 60, here=tmp_path)
    assert plain["status"] == "text" and plain["text"] == "plain table, small\n" and "rows" not in plain
    broken = run_all.run_script("bench_broken.py", True, 60, here=tmp_path)
    assert broken["status"] == "failed" and broken["error"] == "exit status 3" and "half" in broken["stderr"]
    assert run_all.run_script("bench_none.py", True, 60, here=tmp_path)["status"] == "missing"


@pytest.mark.timeout(400)
def test_bench_workers_small() -> None:
    """Re-delivery after a worker's SIGKILL (both leases) and the throughput of 1 and 2 workers, on Postgres."""
    doc = run_json("bench_workers.py", timeout=380)
    rows = [r["row"] for r in doc["rows"]]
    print(json.dumps(doc["rows"], indent=1))
    assert sum(r.startswith("SIGKILL of a worker mid-call") for r in rows) == 2
    assert any("1 worker(s)" in r for r in rows) and any("2 worker(s)" in r for r in rows)
    assert all(r["pyrepl3_ms"] > 0 for r in doc["rows"]) and len(doc["load_before"]) == 3


@pytest.mark.timeout(500)
def test_bench_rpc_small() -> None:
    """durable.rpc beside durable.run and a plain call, and durable.map on 1, 2 and 4 workers, from a real kernel on Postgres."""
    doc = run_json("bench_rpc.py", timeout=480)
    rows = {r["row"]: r for r in doc["rows"]}
    print(json.dumps(doc["rows"], indent=1))
    assert {"plain call f(1), in a cell", "durable.run(f, 1): a local step on Postgres", "durable.rpc(f, 1).result(): one worker, on Postgres"} <= set(rows)
    assert sum(" worker(s) x concurrency " in r for r in rows) == 3
    assert all(r["pyrepl3_ms"] > 0 for r in doc["rows"]) and len(doc["load_before"]) == 3
