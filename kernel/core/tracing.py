"""PyREPL3's spans and instruments (OpenTelemetry), for every layer to use.

Only ``opentelemetry-api`` is a dependency: until the user installs an SDK's
providers (``PYREPL3_OTEL_SETUP``, :mod:`kernel.core.telemetry`, or
``opentelemetry-instrument``), the tracer and the meter are the API's proxies
and every call here is a no-op of a few microseconds. The proxies take up a
provider installed later, so the module-level tracer and instruments below work
whenever the setup runs.

Spans (names in :data:`SPANS`): ``pyrepl3.execution`` per cell, the parent of
its ``pyrepl3.step``, ``pyrepl3.prompt`` and ``pyrepl3.checkpoint`` spans, all
on the thread that runs the work (the kernel's main thread); ``pyrepl3.rpc``
for remote work, whose worker side continues the cell's trace from
:func:`carrier` with :func:`continued`.

Instruments: :data:`EXECUTION_DURATION`, :data:`ACTIVE_EXECUTIONS`,
:data:`ERRORS` (by ``pyrepl3.ename``), :data:`CHECKPOINT_BYTES`,
:data:`CHECKPOINT_TIME`, :data:`PROMPT_WAIT`, :data:`RPC_QUEUE` (by
``pyrepl3.group``, through :func:`record_rpc_queue`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace

from kernel import __version__

NAME = "pyrepl3"
#: Every span name PyREPL3 starts.
EXECUTION, STEP, PROMPT, CHECKPOINT, RPC, RPC_RUN = (
    "pyrepl3.execution", "pyrepl3.step", "pyrepl3.prompt", "pyrepl3.checkpoint", "pyrepl3.rpc", "pyrepl3.rpc.run",
)  # fmt: skip
SPANS = (EXECUTION, STEP, PROMPT, CHECKPOINT, RPC, RPC_RUN)

TRACER = trace.get_tracer(NAME, __version__)
METER = metrics.get_meter(NAME, __version__)

EXECUTION_DURATION = METER.create_histogram(
    "pyrepl3.execution.duration", unit="s", description="Time from a cell's submit to its stored outcome"
)
ACTIVE_EXECUTIONS = METER.create_up_down_counter(
    "pyrepl3.executions.active", unit="{execution}", description="Executions running now"
)
ERRORS = METER.create_counter("pyrepl3.execution.errors", unit="{error}", description="Failed executions, by pyrepl3.ename")
CHECKPOINT_BYTES = METER.create_histogram(
    "pyrepl3.checkpoint.size", unit="By", description="Bytes of new blobs a namespace checkpoint wrote"
)
CHECKPOINT_TIME = METER.create_histogram("pyrepl3.checkpoint.duration", unit="s", description="Time to capture a namespace checkpoint")
PROMPT_WAIT = METER.create_histogram("pyrepl3.prompt.wait", unit="s", description="Time a prompt waited for its answer")
RPC_QUEUE = METER.create_histogram(
    "pyrepl3.rpc.queue", unit="s", description="Time from an rpc's promise to a worker starting it, by pyrepl3.group"
)


def attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"pyrepl3.<key>": value}`` for the values OpenTelemetry can hold (None dropped, others as text)."""
    return {
        f"{NAME}.{k}": v if isinstance(v, (str, bool, int, float)) else str(v) for k, v in values.items() if v is not None
    }


class _Off:
    """The span context of a process without an SDK: the invalid span, nothing switched."""

    __slots__ = ()

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()
_UNSET = object()


def tracing_on() -> bool:
    """Whether a tracer provider was installed (an SDK's, by anyone, at any time). The API's own
    global, read directly: ``get_tracer_provider()`` costs an environment lookup per call, on
    every cell of every user without an SDK. (The provider named by ``OTEL_PYTHON_TRACER_PROVIDER``
    is installed by the API when this module gets its tracer, at import.)"""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNSET)
    if provider is _UNSET:  # an API without that global: its public, slower question
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return provider is not None


def span(name: str, **values: Any) -> contextlib.AbstractContextManager[trace.Span]:
    """A span ``name`` around the block, current on this thread, with ``pyrepl3.<key>`` attributes.

    An exception leaving the block is recorded on the span and sets its status to
    ERROR (the API's defaults), and goes on. Without an SDK it is the invalid span and
    nothing else: no attributes built, no context switched (:func:`tracing_on`)."""
    if not tracing_on():
        return _OFF
    return TRACER.start_as_current_span(name, attributes=attributes(values))


def annotate(**values: Any) -> None:
    """Add ``pyrepl3.<key>`` attributes to the current span (a no-op without one)."""
    if not tracing_on():
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes(values))


def carrier() -> dict[str, str]:
    """The W3C trace context of the current span (``traceparent``, ``tracestate``), to store
    with remote work so that its worker's span is a child of this one; ``{}`` without an SDK."""
    out: dict[str, str] = {}
    propagate.inject(out)
    return out


@contextlib.contextmanager
def continued(carried: Mapping[str, str] | None) -> Iterator[None]:
    """Make the carried context (:func:`carrier`'s, from another process) current in the block:
    a span started inside is a child of the span that made the carrier."""
    token = otel_context.attach(propagate.extract(dict(carried or {})))
    try:
        yield
    finally:
        otel_context.detach(token)


def record_rpc_queue(seconds: float, group: str) -> None:
    """A worker took an rpc ``seconds`` after its promise was created (on the worker, at start)."""
    RPC_QUEUE.record(max(0.0, seconds), {f"{NAME}.group": group})


__all__ = [
    "ACTIVE_EXECUTIONS", "CHECKPOINT", "CHECKPOINT_BYTES", "CHECKPOINT_TIME", "ERRORS", "EXECUTION",
    "EXECUTION_DURATION", "PROMPT", "PROMPT_WAIT", "RPC", "RPC_QUEUE", "RPC_RUN", "SPANS", "STEP",
    "annotate", "attributes", "carrier", "continued", "record_rpc_queue", "span", "tracing_on",
]  # fmt: skip
