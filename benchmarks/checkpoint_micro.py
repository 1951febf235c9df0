"""Timings of namespace checkpoints on a large namespace (printed, never asserted).

Workload (from the checkpoint issue): four 125 MB float64 arrays and 10,000
instances of a class defined in the notebook, then small cells
``counter += 1; small_list.append(counter)``. Run:

    .venv/bin/python benchmarks/checkpoint_micro.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from kernel.checkpoint.checkpointer import Checkpointer
from kernel.checkpoint.manifest import Manifest
from kernel.store.embedded.blobs import FileBlobStore

SETUP = """
import numpy as np
class Point:
    def __init__(self, i):
        self.i = i
        self.label = f"p{i}"
        self.tags = [i, i + 1]
    def norm(self):
        return scale * (self.i ** 2)
scale = 1.0
points = [Point(i) for i in range(10_000)]
counter = 0
small_list = []
"""
SMALL = "counter += 1\nsmall_list.append(counter)"


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", help="store directory to keep (default: a temp dir, removed)")
    parser.add_argument("--cells", type=int, default=50)
    args = parser.parse_args()
    home = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pyrepl3-ckpt-"))
    try:
        run(home, args.cells)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def run(home: Path, cells: int) -> None:
    ns: dict = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(SETUP, ns)
    rng = np.random.default_rng(0)
    for i in range(4):
        ns[f"arr{i}"] = rng.random(125_000_000 // 8)
    data = sum(ns[f"arr{i}"].nbytes for i in range(4))
    print(f"namespace: 4 arrays = {data / 1e6:.0f} MB, {len(ns['points'])} Point instances")

    blobs = FileBlobStore(home / "blobs").open()
    cp = Checkpointer(blobs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    manifest, report = cp.capture(ns, code=SETUP, previous=None)
    first = time.perf_counter() - t
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    print(f"first checkpoint:       {first * 1e3:8.1f} ms  (wrote {report.written_bytes / 1e6:.1f} MB, {len(manifest.entries)} names; peak RSS grew {grew:.0f} MB)")
    stored = du(home / "blobs")
    print(f"storage after it:       {stored / 1e6:.1f} MB on disk for {data / 1e6:.0f} MB of arrays ({stored / data:.4f}x)")

    times = []
    for _ in range(cells):
        exec(SMALL, ns)
        t = time.perf_counter()
        manifest, report = cp.capture(ns, code=SMALL, previous=manifest)
        times.append(time.perf_counter() - t)
    print(
        f"small cell checkpoint:  {statistics.median(times) * 1e3:8.2f} ms median, {max(times) * 1e3:.2f} ms max over {cells}"
        f"  (re-pickled {report.pickled}, wrote {report.written_bytes} B)"
    )

    cell = "points[7].i = -1"
    exec(cell, ns)
    t = time.perf_counter()
    manifest, report = cp.capture(ns, code=cell, previous=manifest)
    print(f"cell mutating points:   {(time.perf_counter() - t) * 1e3:8.1f} ms  (re-pickled {report.pickled})")

    cell = "arr1[0] = 1.0"
    exec(cell, ns)
    t = time.perf_counter()
    manifest, report = cp.capture(ns, code=cell, previous=manifest)
    print(f"cell mutating one array:{(time.perf_counter() - t) * 1e3:8.1f} ms  (re-pickled {report.pickled}, wrote {report.written_bytes / 1e6:.1f} MB)")

    cell = "get_ipython().run_line_magic('time', 'counter += 1')"
    ns["counter"] += 1
    t = time.perf_counter()
    manifest, report = cp.capture(ns, code=cell, previous=manifest)
    print(
        f"fallback (magic) cell:  {(time.perf_counter() - t) * 1e3:8.1f} ms  "
        f"(full: {report.full_reason}; re-pickled {len(report.pickled)} names, wrote {report.written_bytes} B)"
    )

    stored = du(home / "blobs")
    print(f"storage after all cells: {stored / 1e6:.1f} MB on disk for {data / 1e6:.0f} MB of arrays ({stored / data:.3f}x), manifest total_size {manifest.total_size / 1e6:.1f} MB")
    dumped = manifest.model_dump(mode="json")

    fresh: dict = {"__name__": "__main__"}
    t = time.perf_counter()
    restored = Checkpointer(FileBlobStore(home / "blobs").open()).restore(Manifest.model_validate(dumped), fresh)
    print(f"restore (same process): {(time.perf_counter() - t) * 1e3:8.1f} ms  {restored.summary()[:90]}")
    assert fresh["arr1"][0] == 1.0 and fresh["points"][7].i == -1 and fresh["arr0"].flags.writeable

    (home / "manifest.json").write_text(Manifest.model_validate(dumped).model_dump_json())
    child = textwrap.dedent(
        f"""
        import time, pathlib
        t0 = time.perf_counter()
        from kernel.checkpoint.checkpointer import Checkpointer
        from kernel.checkpoint.manifest import Manifest
        from kernel.store.embedded.blobs import FileBlobStore
        home = pathlib.Path({str(home)!r})
        m = Manifest.model_validate_json((home / "manifest.json").read_text())
        ns = {{"__name__": "__main__"}}
        t = time.perf_counter()
        r = Checkpointer(FileBlobStore(home / "blobs").open()).restore(m, ns)
        print(f"restore (fresh process):{{(time.perf_counter() - t) * 1e3:8.1f}} ms  (imports {{(t - t0) * 1e3:.0f}} ms)  norm={{ns['points'][3].norm()}}")
        """
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=os.environ)
    print(out.stdout.strip() or out.stderr.strip())


if __name__ == "__main__":
    main()
