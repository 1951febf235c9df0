"""``pyrepl3 stats [--session S] [--json]``: the figures the kernel's metrics give, from the store.

The same figures as the OpenTelemetry instruments (:mod:`kernel.core.tracing`),
for a store nobody traced: executions (how many, how they ended, how long from
submit to stored outcome), errors by name, namespace checkpoints (bytes written,
capture time: what each checkpoint record keeps), prompt waits (an
``exec:<msg_id>:input:<n>`` from created to settled) and rpc queue times (an
``exec:<msg_id>:rpc:<n>`` from created to the ``started_at`` its worker stored;
rows without it are skipped). Every figure comes from listings
(:meth:`Catalog.executions`, :meth:`Catalog.of_kind`), never from outputs.

The checkpoint figures are read without verifying the records' seals: they are
only shown, never loaded (a forged record could only make a figure wrong).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from contextlib import closing
from typing import Any

from kernel.cli.commands import _catalog
from kernel.cli.render import Output
from kernel.core.settings import Settings
from kernel.core.text import human_size

_FAILED = ("rejected", "rejected_canceled", "rejected_timedout")


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values``; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, Any]:
    """count, p50, p90 and max of ``values``."""
    return {"count": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9), "max": max(values, default=None)}


def figures(catalog: Any, session: str | None) -> dict[str, Any]:
    """Every figure of ``pyrepl3 stats`` (JSON-ready)."""
    runs = catalog.executions(session)
    states = Counter("ok" if r.state == "resolved" else "error" if r.state in _FAILED else "pending" for r in runs)
    durations = [(r.settled_at - r.created_at) / 1000 for r in runs if r.settled_at is not None]
    errors = Counter(r.ename or r.state for r in runs if r.state in _FAILED)
    written, stored, captured = [], [], []
    for rec in catalog.of_kind("checkpoint", session, values=True):
        value = rec["value"] if isinstance(rec["value"], dict) else {}
        if rec["state"] != "resolved":
            continue
        if isinstance(value.get("written"), int):
            written.append(value["written"])
        if isinstance(value.get("size"), int):
            stored.append(value["size"])
        if isinstance(value.get("seconds"), (int, float)):
            captured.append(float(value["seconds"]))
    waits = [(p["settled_at"] - p["created_at"]) / 1000 for p in catalog.of_kind("input", session) if p["settled_at"] is not None]
    queued = []
    for rec in catalog.of_kind("rpc", session, values=True):
        started = (rec["value"] or {}).get("started_at") if isinstance(rec["value"], dict) else None
        if isinstance(started, (int, float)):
            queued.append(max(0.0, started - rec["created_at"] / 1000))
    return {
        "session": session,
        "executions": {"count": len(runs), **{k: states.get(k, 0) for k in ("ok", "error", "pending")}, "duration_s": spread(durations)},
        "errors": dict(errors.most_common()),
        "checkpoints": {
            "count": len(stored) or len(written),
            "bytes_written_total": sum(written),
            "bytes_written": spread([float(w) for w in written]),
            "size_median": percentile([float(s) for s in stored], 0.5),
            "capture_s": spread(captured),
        },
        "prompts": {"wait_s": spread(waits)},
        "rpc": {"queue_s": spread(queued)},
    }


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _bytes(value: float | None) -> str:
    return "-" if value is None else human_size(value)


def stats(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    with closing(_catalog(settings)) as cat:
        data = figures(cat, args.session)
    if args.json:
        out.json(data)
        return 0
    ex, ck = data["executions"], data["checkpoints"]
    where = f"session {args.session!r}" if args.session else "every session"
    out.line(f"{where}: {ex['count']} executions ({ex['ok']} ok, {ex['error']} error, {ex['pending']} pending), {ck['count']} checkpoints")
    rows = []
    for label, fig, show in (
        ("execution time", ex["duration_s"], _seconds),
        ("checkpoint written", ck["bytes_written"], _bytes),
        ("checkpoint capture", ck["capture_s"], _seconds),
        ("prompt wait", data["prompts"]["wait_s"], _seconds),
        ("rpc queue", data["rpc"]["queue_s"], _seconds),
    ):
        rows.append([label, str(fig["count"]), show(fig["p50"]), show(fig["p90"]), show(fig["max"])])
    out.table(["figure", "count", "p50", "p90", "max"], rows)
    out.line(f"checkpoint bytes written: {human_size(ck['bytes_written_total'])} in all; median checkpoint size {_bytes(ck['size_median'])}")
    if data["errors"]:
        out.line()
        out.table(["error", "executions"], [[name, str(n)] for name, n in data["errors"].items()])
    return 0


__all__ = ["figures", "percentile", "spread", "stats"]
