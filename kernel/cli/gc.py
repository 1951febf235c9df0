"""``pyrepl3 gc``: reclaim the storage of checkpoints retention lets go, and of blobs nothing names.

Retention and the grace period come from the settings (``PYREPL3_KEEP_LAST``,
``PYREPL3_KEEP_HOURS``, ``PYREPL3_GC_GRACE``), as in a kernel's own background
collection; ``--session`` collects one session's checkpoints (blobs are shared by every
session of the store, so the sweep always looks at all of them), ``--dry-run`` reads
everything and deletes nothing. Safe while kernels write to the store: see
:mod:`kernel.checkpoint.reclaim`.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

from kernel.checkpoint.reclaim import Collector, GcReport
from kernel.cli.render import Output
from kernel.core.settings import Settings
from kernel.core.text import human_size
from kernel.durable.reclaiming import policy_of
from kernel.store.registry import open_engine


def gc(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    settings.check("keep_last", "keep_hours", "gc_grace")
    with ExitStack() as stack:
        engine = open_engine(settings)
        stack.callback(engine.close)
        reclaimer = engine.reclaimer()
        stack.callback(reclaimer.close)
        catalog = engine.catalog()
        stack.callback(catalog.close)
        blobs = engine.blobs()
        stack.callback(blobs.close)
        report = Collector(catalog, reclaimer, blobs, policy_of(settings), grace=settings.gc_grace).run(args.session, dry_run=args.dry_run)
    if args.json:
        out.json(report.to_json())
    else:
        render(report, out)
    return 0


def render(report: GcReport, out: Output) -> None:
    would = "would be " if report.dry_run else ""
    out.line(f"retention keeps {report.policy}" + ("  (dry run: nothing deleted)" if report.dry_run else ""))
    if report.sessions:
        out.table(
            ["session", "checkpoints kept", "pinned", f"{would}deleted", "after executions"],
            [
                [s.session, str(s.kept), str(s.pinned), str(len(s.deleted)), _counts(s.deleted_counts)]
                for s in report.sessions
            ],
        )
    else:
        out.line("no checkpoints in this store")
    out.table(
        ["blobs", "count", "bytes"],
        [
            ["live (a kept checkpoint or an output names it)", str(report.live_blobs), human_size(report.live_bytes)],
            ["unnamed, within the grace period", str(report.young_blobs), human_size(report.young_bytes)],
            [f"{would}freed", str(report.freed_blobs), human_size(report.freed_bytes)],
        ],
    )
    parts = sorted(set(report.before) | set(report.after))
    out.table(
        ["store", "before", "after"],
        [[part, human_size(report.before.get(part, 0)), human_size(report.after.get(part, 0))] for part in parts],
    )
    out.line(f"pyrepl3 gc: {report.summary()}")


def _counts(counts: list[int], limit: int = 12) -> str:
    shown = ", ".join(str(c) for c in counts[:limit])
    return shown + (f", … {len(counts) - limit} more" if len(counts) > limit else "")


__all__ = ["gc", "render"]
