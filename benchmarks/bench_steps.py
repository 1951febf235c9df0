"""Durable steps and step values inside a real cell, beside a raw SQLite row as the floor.

    .venv/bin/python benchmarks/bench_steps.py                 # 2,000 steps, 1,000 versions of one name
    .venv/bin/python benchmarks/bench_steps.py --small         # CI: 200 steps, 200 versions
    .venv/bin/python benchmarks/bench_steps.py --profile       # also cProfile 500 steps inside the cell
    PYREPL3_TEST_PG_DSN=postgresql://... .venv/bin/python benchmarks/bench_steps.py   # adds the Postgres engine

A PyREPL3 kernel (started by jupyter_client, a fresh PYREPL3_HOME; one per
engine) runs the timed loops *inside one cell*, each call timed with
``time.perf_counter``, so the figures are the cost of the call itself, not of a
round trip:

* ``durable.run(f)`` of a trivial ``f`` (returns None), in blocks of 50,
  interleaved with blocks of 50 raw ``sqlite3`` rows (an INSERT of a 200-byte
  record and a COMMIT, WAL and ``synchronous=NORMAL`` as the embedded store
  uses, in a file beside the store): the engine's floor, measured in the same
  process and run;
* ``durable.checkpoint('x', i)`` for ``--versions`` versions of one name: the
  first 100 calls against the last 100 (growth with history), and
  ``durable.get_checkpoint('x')`` after them.

Targets, printed and not asserted: a step <= 0.2 ms (median); checkpoint calls
flat in the number of versions (the last 100 within 10 % + 0.05 ms of the
first 100). The machine's load (``os.getloadavg``) is printed before and
after: compare only figures of the same run. ``--json``: the rows as JSON
(benchmarks/_report.py). Exit status 0 unless something failed (2).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import Report, alone, guard, load  # noqa: E402
from bench_core import BenchError, Kernels, run_cell  # noqa: E402
from bench_start import PYREPL3  # noqa: E402

SESSION = "bench-steps"
STEP_TARGET_MS = 0.2
BLOCK = 50

STEPS = """
import json as _j, sqlite3 as _s, time as _t
def _trivial():
    return None
_db = _s.connect({db!r}, isolation_level=None)
_db.execute('PRAGMA journal_mode=WAL'); _db.execute('PRAGMA synchronous=NORMAL')
_db.execute('CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, record BLOB)')
_rec, _step, _raw = b'x' * 200, [], []
for _b in range({blocks}):
    for _i in range({block}):
        _t0 = _t.perf_counter(); durable.run(_trivial); _step.append(_t.perf_counter() - _t0)
    for _i in range({block}):
        _t0 = _t.perf_counter()
        _db.execute('BEGIN'); _db.execute('INSERT INTO rows VALUES (?, ?)', (f'{{_b}}:{{_i}}', _rec)); _db.execute('COMMIT')
        _raw.append(_t.perf_counter() - _t0)
_db.close()
print('RESULT', _j.dumps({{'step': _step, 'raw': _raw}}))
"""

CHECKPOINTS = """
import json as _j, time as _t
_ck = []
for _i in range({versions}):
    _t0 = _t.perf_counter(); durable.checkpoint('x', _i); _ck.append(_t.perf_counter() - _t0)
_get = []
for _i in range(20):
    _t0 = _t.perf_counter(); _v = durable.get_checkpoint('x'); _get.append(_t.perf_counter() - _t0)
assert _v == {versions} - 1, _v
print('RESULT', _j.dumps({{'ckpt': _ck, 'get': _get}}))
"""

PROFILE = """
import cProfile as _cp, pstats as _ps, io as _io
def _trivial():
    return None
_p = _cp.Profile(); _p.enable()
for _i in range({n}):
    durable.run(_trivial)
_p.disable(); _o = _io.StringIO()
_ps.Stats(_p, stream=_o).sort_stats('tottime').print_stats(25)
print(_o.getvalue())
"""


def cell_output(kc: Any, code: str, timeout: float = 600.0) -> str:
    """Run ``code`` and return its stdout (BenchError on an error reply)."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content.get("name") == "stdout":
            out.append(content["text"])
        elif kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    try:
        reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    except (TimeoutError, queue.Empty) as exc:
        raise BenchError(f"the cell did not finish within {timeout:g}s") from exc
    if reply["content"]["status"] != "ok":
        raise BenchError(f"the cell failed: {errors or reply['content']}")
    return "".join(out)


def result(text: str) -> dict[str, list[float]]:
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return {k: [x * 1000 for x in v] for k, v in json.loads(line[7:]).items()}
    raise BenchError(f"no RESULT line in {text[-500:]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 2000; 200 with --small)")
    parser.add_argument("--versions", type=int, default=None, help="versions of one step value (default 1000; 200 with --small)")
    parser.add_argument("--small", action="store_true", help="CI size")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of 500 steps inside the cell")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/_report.py)")
    args = parser.parse_args(argv)
    steps = args.steps or (200 if args.small else 2000)
    versions = args.versions or (200 if args.small else 1000)
    window = min(100, versions // 2)
    engines = [("embedded", {})]
    if dsn := os.environ.get("PYREPL3_TEST_PG_DSN", "").strip():
        engines.append(("postgres", {"PYREPL3_STORE": dsn}))

    work = Path(tempfile.mkdtemp(prefix="pyrepl3-bench-steps-"))
    kernels = Kernels({"IPYTHONDIR": str(work / "ipython")}, work)
    load_before = load()
    rows = []
    profiles: list[str] = []
    try:
        for engine, extra in engines:
            session = f"{SESSION}-{os.getpid()}-{engine}"
            _km, kc, _ready = kernels.start(PYREPL3, {"PYREPL3_HOME": str(work / f"home-{engine}"), "PYREPL3_SESSION": session, **extra})
            run_cell(kc, "pass")
            db = str(work / f"raw-{engine}.sqlite")
            timed = result(cell_output(kc, STEPS.format(db=db, blocks=max(steps // BLOCK, 1), block=BLOCK)))
            ck = result(cell_output(kc, CHECKPOINTS.format(versions=versions)))
            if args.profile:
                profiles.append(f"[{engine}] cProfile of 500 durable.run steps (tottime):\n" + cell_output(kc, PROFILE.format(n=500)))
            first, last = ck["ckpt"][:window], ck["ckpt"][-window:]
            growth = statistics.median(last) - statistics.median(first)
            flat = max(0.05, 0.10 * statistics.median(first))
            main_engine = engine == "embedded"
            step_med, floor = statistics.median(timed["step"]), statistics.median(timed["raw"])
            rows += [
                alone(f"[{engine}] durable.run step, trivial fn", "step" if main_engine else None, timed["step"],
                      at_most=STEP_TARGET_MS, note=f"step / raw sqlite3 row {step_med / floor:.1f}x"),
                alone(f"[{engine}] raw sqlite3 insert+commit (floor)", None, timed["raw"]),
                alone(f"[{engine}] durable.checkpoint, first {window} of {versions}", None, first),
                alone(f"[{engine}] durable.checkpoint, last {window} of {versions}", "ckpt1000" if main_engine else None, last,
                      target=f"flat: <= first {window} + {flat:.3f} ms", met=growth <= flat, note=f"{growth:+.3f} ms vs the first {window}"),
                alone(f"[{engine}] durable.get_checkpoint after {versions} versions", None, ck["get"]),
            ]
    finally:
        kernels.stop_all()
    shutil.rmtree(work, ignore_errors=True)
    header = (f"{steps} steps (blocks of {BLOCK}, interleaved with raw rows), {versions} versions of one step value, "
              f"each call timed inside the cell; engines: {', '.join(e for e, _ in engines)}")
    return Report("bench_steps", args.small, header, load_before, rows, profiles).emit(json_out=args.json)


if __name__ == "__main__":
    guard(main, "bench_steps")
