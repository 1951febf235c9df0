"""What OpenTelemetry costs a trivial cell, in process: the tracing calls one cell makes.

    .venv/bin/python benchmarks/tracing_micro.py [--n 20000]

A trivial cell makes one ``pyrepl3.execution`` span (with the active-executions
counter and the duration histogram), one ``pyrepl3.checkpoint`` span with its
two histograms, and the outcome's attributes. This times exactly those calls
(``kernel.durable.observed.execution``, ``kernel.core.tracing.span``), first
with no SDK (the API not even imported: what every user without
``PYREPL3_OTEL_SETUP`` pays), then with the SDK and an in-memory exporter,
beside an empty loop. Median of 7 repeats, microseconds per cell; the load is
printed. Not part of ``run_all.py``: the round trip of a cell (``bench_hotpath.py``)
cannot resolve microseconds on a loaded machine, so this isolates them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernel.core import tracing  # noqa: E402
from kernel.core.models import CellResult, Timings  # noqa: E402
from kernel.durable import observed  # noqa: E402

OUTCOME = CellResult(execution_id="exec:m", execution_count=1, timings=Timings(started=0.0, finished=0.0, duration_ms=0.0))


def one_cell() -> None:
    with observed.execution("exec:m", "s", "m", 1) as trace:
        with tracing.span(tracing.CHECKPOINT, execution_id="exec:m", execution_count=1):
            tracing.CHECKPOINT_BYTES.record(100)
            tracing.CHECKPOINT_TIME.record(0.001)
            tracing.annotate(promise_id="ckpt:k:1", written_bytes=100, seconds=0.001, full_scan=False, delta=True)
        trace.ended(OUTCOME)


def nothing() -> None:
    pass


def per_call_us(fn, n: int) -> float:  # noqa: ANN001
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    print(f"load before: {os.getloadavg()}")
    empty = per_call_us(nothing, args.n)
    off = per_call_us(one_cell, args.n)
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    on = per_call_us(lambda: (one_cell(), exporter.clear()), max(1, args.n // 10))
    print(f"empty call:                 {empty:8.2f} us")
    print(f"one cell's tracing, no SDK: {off:8.2f} us  (minus the empty call: {off - empty:.2f} us)")
    print(f"one cell's tracing, SDK:    {on:8.2f} us  (in-memory exporter, simple processor)")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
