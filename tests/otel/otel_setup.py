"""A ``PYREPL3_OTEL_SETUP`` callable for the tracing tests: the kernel's PYTHONPATH has
this directory, and ``PYREPL3_OTEL_SETUP=otel_setup:install`` installs in-memory
exporters; a cell calls :func:`dump` to print what was recorded, as JSON."""

from __future__ import annotations

import json
import threading

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SPANS = InMemorySpanExporter()
READER = InMemoryMetricReader()
CALLS = []


class ThreadNames(SpanProcessor):
    """Records the thread each span started on (``test.thread``)."""

    def on_start(self, span, parent_context=None) -> None:  # noqa: ANN001 - the SDK's signature
        span.set_attribute("test.thread", threading.current_thread().name)


def install() -> None:
    CALLS.append(1)
    provider = TracerProvider()
    provider.add_span_processor(ThreadNames())
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


def broken() -> None:
    raise RuntimeError("this setup is broken on purpose")


def spans() -> list[dict]:
    return [
        {
            "name": s.name,
            "span_id": format(s.context.span_id, "016x"),
            "trace_id": format(s.context.trace_id, "032x"),
            "parent": format(s.parent.span_id, "016x") if s.parent is not None else None,
            "attributes": dict(s.attributes or {}),
            "status": s.status.status_code.name,
            "events": [e.name for e in s.events],
        }
        for s in SPANS.get_finished_spans()
    ]


def metric_points() -> dict[str, list[dict]]:
    data = READER.get_metrics_data()
    out: dict[str, list[dict]] = {}
    for rm in data.resource_metrics if data is not None else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    point = {"attributes": dict(p.attributes or {})}
                    if hasattr(p, "count"):
                        point.update(count=p.count, sum=p.sum, max=p.max)
                    else:
                        point["value"] = p.value
                    out.setdefault(m.name, []).append(point)
    return out


def dump() -> None:
    print("OTEL-DUMP " + json.dumps({"spans": spans(), "metrics": metric_points(), "calls": len(CALLS)}))


class _FileDump(SpanProcessor):
    """Writes every finished span, and the metrics so far, to the file ``OTEL_TEST_DUMP`` names
    (for a process no cell can ask, a ``pyrepl3 worker``): rewritten whole, then renamed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()

    def on_end(self, span) -> None:  # noqa: ANN001 - the SDK's signature
        with self.lock:
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"spans": spans(), "metrics": metric_points(), "calls": len(CALLS)}, f)
            import os

            os.replace(tmp, self.path)


def install_to_file() -> None:
    """:func:`install`, and every span's end dumped to ``$OTEL_TEST_DUMP``."""
    import os

    install()
    trace.get_tracer_provider().add_span_processor(_FileDump(os.environ["OTEL_TEST_DUMP"]))
