"""Storage reclaimed: a session that rewrites a large array, its store before and after ``pyrepl3 gc``.

    .venv/bin/python benchmarks/bench_gc.py              # a 100 MB array rewritten 50 times
    .venv/bin/python benchmarks/bench_gc.py --small      # CI: 8 MB, 6 times
    PYREPL3_TEST_PG_DSN=postgresql://... .venv/bin/python benchmarks/bench_gc.py --pg-mb 20   # adds Postgres (smaller)

A PyREPL3 kernel (jupyter_client, a fresh PYREPL3_HOME, one per engine) builds a float64
array of ``--mb`` MB and rewrites it ``--rewrites`` times (``a += 1``: new content, so
each checkpoint writes a new blob of that size). Then, with the kernel idle:

* ``pyrepl3 gc --dry-run`` with the default retention (the newest 20, the last 24 h):
  what a day-old session would keep;
* ``pyrepl3 gc`` with ``PYREPL3_KEEP_LAST=1 PYREPL3_KEEP_HOURS=0 PYREPL3_GC_GRACE=0``
  (the kernel is idle: nothing is being written), timed from outside (process start
  included) and as the collector reports it;
* the store on disk before and after (embedded: ``store.sqlite3`` + WAL + ``blobs/``;
  Postgres: the blob bytes its tables hold for the whole database), against the live
  data (the array's bytes);
* a kill -9 and a new kernel: the array comes back whole (its checksum), so what gc
  kept is what a restore needs.

Target, printed and not asserted: after gc the store holds <= 2x the live data. The
machine's load (``os.getloadavg``) is printed before and after. Exit status 0 unless
something failed (2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import Report, alone, guard, load  # noqa: E402
from bench_core import BenchError, Kernels, run_cell  # noqa: E402
from bench_start import PYREPL3  # noqa: E402
from bench_steps import cell_output  # noqa: E402

CLI = Path(sys.executable).parent / "pyrepl3"
TARGET = 2.0
BUILD = "import numpy as np\na = np.arange({n}, dtype=np.float64)\n"
REWRITE = "a += 1\n"
CHECK = "print('SUM', float(a.sum()), a.nbytes)"


def disk_bytes(home: Path) -> int:
    """Bytes the embedded store takes: its database file, WAL and blobs."""
    total = 0
    for path in [home / "store.sqlite3", home / "store.sqlite3-wal", *(home / "blobs").rglob("*")]:
        if path.is_file():
            total += path.stat().st_size
    return total


def pg_bytes(dsn: str) -> tuple[int, int]:
    """(blob bytes held, on-disk size of the blob tables) in the whole database."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(size), 0), pg_total_relation_size('pyrepl3.blob_chunks') + pg_total_relation_size('pyrepl3.blobs') "
            "FROM pyrepl3.blobs"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def gc(home: Path, session: str, extra: dict[str, str], *options: str) -> tuple[dict[str, Any], float]:
    """``pyrepl3 gc --session S --json OPTIONS``: its report and the wall time of the whole command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYREPL3_")}
    env.update(extra)
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(CLI), "--home", str(home), "gc", "--session", session, "--json", *options],
        capture_output=True, text=True, env=env, timeout=900, stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise BenchError(f"pyrepl3 gc failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout), wall


def mb(n: float) -> str:
    return f"{n / 1e6:9.1f} MB"


def one_engine(kernels: Kernels, work: Path, engine: str, store: dict[str, str], size_mb: int, rewrites: int) -> list[Any]:
    home = work / f"home-{engine}"
    session = f"bench-gc-{os.getpid()}-{engine}"
    env = {"PYREPL3_HOME": str(home), "PYREPL3_SESSION": session, "PYREPL3_GC_EVERY": "0", **store}
    km, kc, _ready = kernels.start(PYREPL3, env)
    n = size_mb * 1_000_000 // 8
    t0 = time.perf_counter()
    run_cell(kc, BUILD.format(n=n), timeout=900)
    for _ in range(rewrites):
        run_cell(kc, REWRITE, timeout=900)
    cells = time.perf_counter() - t0
    before_sum = cell_output(kc, CHECK)
    live = n * 8
    measure = (lambda: disk_bytes(home)) if engine == "embedded" else (lambda: pg_bytes(store["PYREPL3_STORE"])[0])
    before = measure()
    defaults, _ = gc(home, session, store, "--dry-run")
    policy = {**store, "PYREPL3_KEEP_LAST": "1", "PYREPL3_KEEP_HOURS": "0", "PYREPL3_GC_GRACE": "0"}
    dry, dry_wall = gc(home, session, policy, "--dry-run")
    if measure() != before:
        raise BenchError("the dry run changed the store")
    report, wall = gc(home, session, policy)
    after = measure()
    os.kill(km.provisioner.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    kernels.stop(km)
    _km, kc2, _ = kernels.start(PYREPL3, env)
    after_sum = cell_output(kc2, CHECK)
    if after_sum != before_sum:
        raise BenchError(f"after gc and kill -9 the array came back as {after_sum!r}, not {before_sum!r}")
    ratio = after / live
    [mine] = report["sessions"]
    [kept_default] = defaults["sessions"]
    store_row = alone(f"[{engine}] store after gc (keep 1)", "storage" if engine == "embedded" else None, [after / 1e6],
                      unit="MB", target=f"<= {TARGET:g}x the live data", met=ratio <= TARGET,
                      note=f"{ratio:.2f}x the live data ({mb(live).strip()}); {before / live:.1f}x before gc; after kill -9 restored, checksum equal")
    rows = [
        alone(f"[{engine}] {rewrites + 1} cells building/rewriting a {size_mb} MB array", None, [cells * 1000],
              note=f"{(rewrites + 1) / cells:.1f} cells/s"),
        alone(f"[{engine}] store before gc", None, [before / 1e6], unit="MB", note=f"{before / live:.1f}x the live data"),
        alone(f"[{engine}] default retention (newest 20, last 24 h): dry run, checkpoints kept", None, [kept_default["kept"]], unit="",
              note=f"would free {defaults['checkpoints_deleted']} checkpoints, {defaults['blobs']['freed_bytes'] / 1e6:.0f} MB"),
        alone(f"[{engine}] gc --dry-run (keep 1), wall", None, [dry_wall * 1000],
              note=f"collector {dry['seconds']:.3f} s; would free {dry['blobs']['freed_bytes'] / 1e6:.0f} MB"),
        alone(f"[{engine}] gc (keep 1), wall", None, [wall * 1000],
              note=f"collector {report['seconds']:.3f} s; {mine['kept']} kept, {len(mine['deleted'])} deleted, {report['blobs']['freed']} blobs freed"),
        store_row,
    ]
    if engine == "postgres":
        rows.append(alone(f"[{engine}] blob tables on disk after gc (dead rows until autovacuum)", None,
                          [pg_bytes(store["PYREPL3_STORE"])[1] / 1e6], unit="MB"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=None, help="array size in MB (default 100; 8 with --small)")
    parser.add_argument("--rewrites", type=int, default=None, help="rewrites of the array (default 50; 6 with --small)")
    parser.add_argument("--pg-mb", type=int, default=None, help="array size on Postgres (default: --mb)")
    parser.add_argument("--small", action="store_true", help="CI size")
    parser.add_argument("--json", action="store_true", help="one JSON document (benchmarks/_report.py)")
    args = parser.parse_args(argv)
    size = args.mb or (8 if args.small else 100)
    rewrites = args.rewrites or (6 if args.small else 50)
    engines: list[tuple[str, dict[str, str], int]] = [("embedded", {}, size)]
    if dsn := os.environ.get("PYREPL3_TEST_PG_DSN", "").strip():
        engines.append(("postgres", {"PYREPL3_STORE": dsn}, args.pg_mb or size))
    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-gc-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython")}, work)
    load_before = load()
    rows: list[Any] = []
    try:
        for engine, store, mbs in engines:
            rows += one_engine(kernels, work, engine, store, mbs, rewrites)
    finally:
        kernels.stop_all()
    header = (f"a float64 array rewritten {rewrites} times; "
              f"engines: {', '.join(f'{e} ({m} MB)' for e, _, m in engines)}")
    shutil.rmtree(work, ignore_errors=True)
    return Report("bench_gc", args.small, header, load_before, rows).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_gc")
