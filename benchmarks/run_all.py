"""Every row of issue 12's table in one command: PyREPL3 beside ipykernel, measured in the same run.

    .venv/bin/python benchmarks/run_all.py              # full size (about 20 minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --small      # CI size (each benchmark's --small)
    .venv/bin/python benchmarks/run_all.py --json       # the whole run as one JSON document
    .venv/bin/python benchmarks/run_all.py --only bench_core.py,bench_frames.py
    .venv/bin/python benchmarks/run_all.py --from run.json   # the table of a saved --json run

Runs each benchmark of ``SCRIPTS`` that exists, one after the other, each in
its own process with ``--json`` (and ``--small`` when given), and collects
the rows it reports (the contract is in ``benchmarks/_report.py``). Each
benchmark interleaves and repeats its own measurements, PyREPL3 beside
ipykernel where a kernel is involved; this command only gathers them. It
prints issue 12's table in the issue's order (every figure with its target
and whether it is met; a figure no benchmark measured is "not measured",
naming the script expected to measure it, never a figure made up), then the
benchmarks' other figures, and the machine's load before and after each
benchmark and the whole run.

Exit status: 0 when every benchmark that exists ran (a missed target is
reported, not an error); 2 when one failed (its rows are "not measured" and
its error is printed). A benchmark that does not take ``--json`` yet is run
without it: its figures are "not measured" and its own output is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _report import ISSUE_ROWS, Row, figures, load, load_text, markdown, progress  # noqa: E402

HERE = Path(__file__).parent

#: The benchmarks, in the order they run, with the issue rows each is expected to fill.
SCRIPTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bench_core.py", ("trivial", "history")),
    ("bench_hotpath.py", ("trivial", "neighbour500", "step", "ckpt1000", "postgres")),
    ("bench_history.py", ("history", "vars10k", "names2000")),
    ("bench_frames.py", ("frames",)),
    ("bench_checkpoint.py", ("neighbour500", "restore500")),
    ("bench_start.py", ("restore500",)),
    ("bench_restore.py", ("start2g",)),
    ("bench_steps.py", ("step", "ckpt1000")),
    ("bench_listings.py", ("start5000", "listing50")),
    ("bench_gc.py", ("storage",)),
    ("bench_workers.py", ()),  # issue 13: remote workers (extra rows)
    ("bench_rpc.py", ()),  # issue 13: durable.rpc / durable.map from a kernel (extra rows)
)
ROW_FIELDS = {f.name for f in fields(Row)}


def run_script(script: str, small: bool, timeout: float, here: Path = HERE) -> dict[str, Any]:
    """Run one benchmark with ``--json``: its document, or {"status": "missing"|"failed", "error": ...}.
    One that does not take ``--json`` yet is run without it: {"status": "text", "text": its table}, no rows."""
    path = here / script
    if not path.exists():
        return {"status": "missing", "error": f"benchmarks/{script} is not on this branch"}
    result = run_json(script, [sys.executable, str(path), "--json", *(["--small"] if small else [])], timeout)
    if result["status"] == "failed" and "unrecognized arguments: --json" in result.get("stderr", ""):
        result = run_json(script, [sys.executable, str(path), *(["--small"] if small else [])], timeout, text=True)
    return result


def run_json(script: str, argv: list[str], timeout: float, text: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, cwd=HERE.parent)
    err: list[str] = []
    out: list[str] = []

    def tee() -> None:  # the benchmark's progress, as it comes, and kept for the report of a failure
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            progress(f"  {script}: {line.rstrip()}")

    def collect() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    readers = [threading.Thread(target=fn, daemon=True) for fn in (tee, collect)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM first: a benchmark shuts its kernels down on the way out
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return {"status": "failed", "error": f"no report within {timeout:g}s", "stderr": "".join(err)[-3000:]}
    finally:
        for reader in readers:
            reader.join(timeout=10)
    stdout = "".join(out)
    took = time.perf_counter() - t0
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, "".join(err))
    if done.returncode != 0:
        return {"status": "failed", "seconds": took, "error": f"exit status {done.returncode}", "stderr": done.stderr[-3000:]}
    if text:
        return {"status": "text", "seconds": took, "text": done.stdout,
                "error": "prints no rows: it does not take --json (benchmarks/_report.py); its own table follows"}
    try:
        doc = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"status": "failed", "seconds": took, "error": "stdout is not one JSON document (benchmarks/_report.py)",
                "stderr": (done.stdout + done.stderr)[-3000:]}
    return {**doc, "status": "ok", "seconds": took}


def rows_of(script: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a report, each with its source; a key the issue's table lacks makes an extra row."""
    out = []
    for raw in doc.get("rows", []):
        row = {k: v for k, v in raw.items() if k in ROW_FIELDS}
        if row.get("key") not in ISSUE_ROWS:
            row["key"] = None
        out.append({**row, "source": script.removesuffix(".py")})
    return out


def as_row(d: dict[str, Any]) -> Row:
    return Row(**{k: v for k, v in d.items() if k in ROW_FIELDS})


def render(doc: dict[str, Any]) -> str:
    """The run as text: issue 12's table (Markdown), the other figures, the scripts and the load."""
    lines = [f"run_all: {'small' if doc['small'] else 'full'} size; {doc['machine']}",
             f"load before: {load_text(doc['load_before'])}", "",
             "## Issue 12's table", ""]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        by_key.setdefault(r["key"], []).append(r)
    scripts = doc["scripts"]
    body = []
    for key, (label, target) in ISSUE_ROWS.items():
        measured = by_key.get(key, [])
        if not measured:
            expected = [f"{s} ({scripts[s]['status'] if s in scripts else 'not run'})" for s, keys in SCRIPTS if key in keys]
            body.append([label, "not measured", "-", "-", "-", target, "not measured", f"expected from {', '.join(expected)}"])
        for i, r in enumerate(measured):
            note = f"{r['source']}" + (f"; {r['note']}" if r.get("note") else "")
            body.append([label if i == 0 else "", r["row"], *figures(as_row(r)), note])
    head = ["figure (issue 12)", "measured", "ipykernel", "PyREPL3", "ratio", "target", "met", "source; note"]
    lines.append(markdown(head, body))
    counted = [r["met"] for r in doc["rows"] if r["key"] is not None]
    missing = sum(1 for key in ISSUE_ROWS if key not in by_key)
    lines += ["", f"targets: {counted.count(True)} met, {counted.count(False)} missed, {counted.count(None)} without a verdict, "
                  f"{missing} of {len(ISSUE_ROWS)} figures not measured", ""]
    extra = by_key.get(None, [])
    if extra:
        lines += ["## Other figures", "",
                  markdown(["measured", "ipykernel", "PyREPL3", "ratio", "target", "met", "source; note"],
                           [[r["row"], *figures(as_row(r)), r["source"] + (f"; {r['note']}" if r.get("note") else "")] for r in extra]),
                  ""]
    lines += ["## Benchmarks", ""]
    for name, s in scripts.items():
        if s["status"] == "ok":
            before, after = (" ".join(f"{x:.2f}" for x in s[k]) for k in ("load_before", "load_after"))
            lines.append(f"- {name}: {s['seconds']:.0f} s, load {before} -> {after}; {s['header']}")
            lines += [f"  {note}" for note in s.get("notes", [])]
        else:
            lines.append(f"- {name}: {s['status']}: {s['error']}")
            lines += [f"  {line}" for line in s.get("stderr", "").splitlines()[-15:]]
            lines += [f"  {line}" for line in s.get("text", "").splitlines()]
    lines.append(f"\nload after:  {load_text(doc['load_after'])}; {doc['seconds']:.0f} s in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="each benchmark at its CI size (--small)")
    ap.add_argument("--json", action="store_true", help="print the run as one JSON document instead of the table")
    ap.add_argument("--only", default="", help="comma-separated scripts to run (default: all of SCRIPTS)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default 3600; 600 with --small)")
    ap.add_argument("--from", dest="saved", type=Path, default=None, help="print the table of a saved --json run; run nothing")
    args = ap.parse_args(argv)
    if args.saved is not None:
        print(render(json.loads(args.saved.read_text())))
        return 0
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {s for s, _ in SCRIPTS}
    if unknown:
        ap.error(f"not in SCRIPTS: {', '.join(sorted(unknown))}")
    timeout = args.timeout or (600.0 if args.small else 3600.0)
    doc: dict[str, Any] = {
        "small": args.small,
        "machine": f"{platform.node()}: python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs",
        "load_before": load(), "scripts": {}, "rows": [],
    }
    t0 = time.perf_counter()
    for script, _keys in SCRIPTS:
        if only and script not in only:
            continue
        progress(f"run_all: {script} ...")
        result = run_script(script, args.small, timeout)
        progress(f"run_all: {script}: {result['status']}" + (f" ({result['seconds']:.0f} s)" if "seconds" in result else "")
                 + (f": {result['error']}" if "error" in result else ""))
        doc["rows"] += rows_of(script, result) if result["status"] == "ok" else []
        result.pop("rows", None)
        doc["scripts"][script] = result
    doc["load_after"] = load()
    doc["seconds"] = time.perf_counter() - t0
    print(json.dumps(doc) if args.json else render(doc))
    return 2 if any(s["status"] == "failed" for s in doc["scripts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
