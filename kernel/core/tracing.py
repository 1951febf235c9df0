"""PyREPL3's spans and instruments (OpenTelemetry), for every layer to use.

Only ``opentelemetry-api`` is a dependency, and it is not even imported until
something needs it: no SDK's provider can be installed without importing the
API, so while ``opentelemetry.trace`` / ``opentelemetry.metrics`` are not loaded
every call here is a no-op of well under a microsecond (importing the API costs a
starting kernel tens of milliseconds: it scans the installed packages' entry
points). The user installs providers with ``PYREPL3_OTEL_SETUP``
(:mod:`kernel.core.telemetry`) or ``opentelemetry-instrument``; once loaded, the
API's proxies take up a provider installed at any time.

Spans (names in :data:`SPANS`): ``pyrepl3.execution`` per cell, the parent of
its ``pyrepl3.step``, ``pyrepl3.prompt`` and ``pyrepl3.checkpoint`` spans, all
on the thread that runs the work (the kernel's main thread); ``pyrepl3.rpc``
for remote work, whose worker side (``pyrepl3.rpc.run``) continues the cell's
trace from :func:`carrier` with :func:`continued`.

Instruments: :data:`EXECUTION_DURATION`, :data:`ACTIVE_EXECUTIONS`,
:data:`ERRORS` (by ``pyrepl3.ename``), :data:`CHECKPOINT_BYTES`,
:data:`CHECKPOINT_TIME`, :data:`PROMPT_WAIT`, :data:`RPC_QUEUE` (by
``pyrepl3.group``, through :func:`record_rpc_queue`).

Remote work, both sides::

    # the cell (inside its execution span): the rpc's span, and its context in the promise
    with tracing.span(tracing.RPC, promise_id=pid, group=group, function=name):
        param["trace"] = tracing.carrier()
        ...create exec:<msg_id>:rpc:<n>...
    # the worker (install_telemetry(settings) once at its start, kernel.core.telemetry)
    tracing.record_rpc_queue(time.time() - created_at_ms / 1000, group)
    with tracing.continued(param.get("trace")), tracing.span(tracing.RPC_RUN, promise_id=pid, group=group):
        ...run it; store "started_at" (wall seconds) in its value, for ``pyrepl3 stats``...
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from kernel import __version__

NAME = "pyrepl3"
#: Every span name PyREPL3 starts.
EXECUTION, STEP, PROMPT, CHECKPOINT, RPC, RPC_RUN = (
    "pyrepl3.execution", "pyrepl3.step", "pyrepl3.prompt", "pyrepl3.checkpoint", "pyrepl3.rpc", "pyrepl3.rpc.run",
)  # fmt: skip
SPANS = (EXECUTION, STEP, PROMPT, CHECKPOINT, RPC, RPC_RUN)

_UNSET = object()
_tracer: Any = None
_meter: Any = None


def tracing_on() -> bool:
    """Whether a tracer provider was installed (an SDK's, by anyone, at any time): the API's
    own global, read directly (``get_tracer_provider()`` costs an environment lookup per call,
    on every cell of every user without an SDK); False while the API is not even loaded."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    provider = getattr(trace, "_TRACER_PROVIDER", _UNSET)
    if provider is _UNSET:  # an API without that global: its public, slower question
        return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return provider is not None


def tracer() -> Any:
    """The ``pyrepl3`` tracer (the API's proxy: it follows whatever provider is installed)."""
    global _tracer
    if _tracer is None:
        from opentelemetry import trace

        _tracer = trace.get_tracer(NAME, __version__)
    return _tracer


def meter() -> Any:
    """The ``pyrepl3`` meter (the API's proxy)."""
    global _meter
    if _meter is None:
        from opentelemetry import metrics

        _meter = metrics.get_meter(NAME, __version__)
    return _meter


class Instrument:
    """One of PyREPL3's instruments, made on first use once the metrics API is loaded; before
    that a use is a no-op (no meter provider can have been installed without loading it)."""

    __slots__ = ("_real", "description", "kind", "name", "unit")

    def __init__(self, kind: str, name: str, unit: str, description: str) -> None:
        self.kind, self.name, self.unit, self.description = kind, name, unit, description
        self._real: Any = None

    def _instrument(self) -> Any:
        if self._real is None and "opentelemetry.metrics" in sys.modules:
            self._real = getattr(meter(), f"create_{self.kind}")(self.name, unit=self.unit, description=self.description)
        return self._real

    def record(self, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        if (real := self._instrument()) is not None:
            real.record(value, attributes)

    def add(self, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        if (real := self._instrument()) is not None:
            real.add(value, attributes)


EXECUTION_DURATION = Instrument("histogram", "pyrepl3.execution.duration", "s", "Time from a cell's submit to its stored outcome")
ACTIVE_EXECUTIONS = Instrument("up_down_counter", "pyrepl3.executions.active", "{execution}", "Executions running now")
ERRORS = Instrument("counter", "pyrepl3.execution.errors", "{error}", "Failed executions, by pyrepl3.ename")
CHECKPOINT_BYTES = Instrument("histogram", "pyrepl3.checkpoint.size", "By", "Bytes of new blobs a namespace checkpoint wrote")
CHECKPOINT_TIME = Instrument("histogram", "pyrepl3.checkpoint.duration", "s", "Time to capture a namespace checkpoint")
PROMPT_WAIT = Instrument("histogram", "pyrepl3.prompt.wait", "s", "Time a prompt waited for its answer")
RPC_QUEUE = Instrument("histogram", "pyrepl3.rpc.queue", "s", "Time from an rpc's promise to a worker starting it, by pyrepl3.group")


def attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"pyrepl3.<key>": value}`` for the values OpenTelemetry can hold (None dropped, others as text)."""
    return {
        f"{NAME}.{k}": v if isinstance(v, (str, bool, int, float)) else str(v) for k, v in values.items() if v is not None
    }


class _Off:
    """The span context of a process without a provider: a non-recording span, nothing switched."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def is_recording(self) -> bool:
        return False


_OFF = _Off()


def span(name: str, **values: Any) -> contextlib.AbstractContextManager[Any]:
    """A span ``name`` around the block, current on this thread, with ``pyrepl3.<key>`` attributes.

    An exception leaving the block is recorded on the span and sets its status to ERROR
    (the API's defaults), and goes on. Without a provider the block gets a non-recording
    stand-in and nothing else: no attributes built, no context switched (:func:`tracing_on`)."""
    if not tracing_on():
        return _OFF
    return tracer().start_as_current_span(name, attributes=attributes(values))


def annotate(**values: Any) -> None:
    """Add ``pyrepl3.<key>`` attributes to the current span (a no-op without one)."""
    if not tracing_on():
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes(values))


def failed(current: Any, description: str) -> None:
    """Set ``current``'s status to ERROR (an outcome that is an error, not an exception here)."""
    if current.is_recording():
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, description[:200]))


def carrier() -> dict[str, str]:
    """The W3C trace context of the current span (``traceparent``, ``tracestate``), to store
    with remote work so that its worker's span is a child of this one; ``{}`` while the API is not
    loaded (then no span can be current)."""
    if "opentelemetry.trace" not in sys.modules:
        return {}
    from opentelemetry import propagate

    out: dict[str, str] = {}
    propagate.inject(out)
    return out


@contextlib.contextmanager
def continued(carried: Mapping[str, str] | None) -> Iterator[None]:
    """Make the carried context (:func:`carrier`'s, from another process) current in the block:
    a span started inside is a child of the span that made the carrier (a no-op without one, or
    while the API is not loaded: then nothing in this process can start a recording span)."""
    if not carried or "opentelemetry.trace" not in sys.modules:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(dict(carried)))
    try:
        yield
    finally:
        context.detach(token)


def record_rpc_queue(seconds: float, group: str) -> None:
    """A worker took an rpc ``seconds`` after its promise was created (on the worker, at start)."""
    RPC_QUEUE.record(max(0.0, seconds), {f"{NAME}.group": group})


def _load_if_configured(environ: Mapping[str, str]) -> None:
    """Providers named by the API's own variables are installed when the API is loaded: load it now."""
    if environ.get("OTEL_PYTHON_TRACER_PROVIDER"):
        tracer()
    if environ.get("OTEL_PYTHON_METER_PROVIDER"):
        meter()


_load_if_configured(os.environ)

__all__ = [
    "ACTIVE_EXECUTIONS", "CHECKPOINT", "CHECKPOINT_BYTES", "CHECKPOINT_TIME", "ERRORS", "EXECUTION",
    "EXECUTION_DURATION", "PROMPT", "PROMPT_WAIT", "RPC", "RPC_QUEUE", "RPC_RUN", "SPANS", "STEP", "Instrument",
    "annotate", "attributes", "carrier", "continued", "failed", "meter", "record_rpc_queue", "span", "tracer", "tracing_on",
]  # fmt: skip
