"""Turning OpenTelemetry on: the user's setup callable, ``PYREPL3_OTEL_SETUP``.

A kernel has no place for SDK setup code before its first cell, so the user
names one: ``module:callable``, imported and called once per process (a kernel
at start, ``pyrepl3 worker`` at its start) to install tracer and meter
providers and their exporters. Until it runs, :mod:`kernel.core.tracing` is a
no-op. A value that cannot be used (not importable, not callable, raising) is
an error in the process's log naming the setting; the process goes on, untraced.
"""

from __future__ import annotations

import importlib
import logging
import threading

from kernel.core.settings import Settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
#: The setup values already called in this process (each runs once).
_done: set[str] = set()


def install_telemetry(settings: Settings) -> bool:
    """Call ``settings.otel_setup``'s callable once in this process; whether tracing was set up
    by it (now or before). Never raises: a failure is logged as an error naming the setting."""
    if problem := settings.problems.get("otel_setup"):
        log.error("OpenTelemetry is not set up: %s", problem)
        return False
    spec = settings.otel_setup
    if not spec:
        return False
    with _lock:
        if spec in _done:
            return True
        source = settings.source("otel_setup")
        module_name, _, attr = spec.partition(":")
        try:
            target: object = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
            if not callable(target):
                raise TypeError(f"{attr} is a {type(target).__name__}, not a callable")
            target()
        except Exception as exc:  # noqa: BLE001 - the user's code raises anything; the kernel goes on
            log.error("OpenTelemetry is not set up: %s=%r failed: %s: %s", source, spec, type(exc).__name__, exc, exc_info=True)
            return False
        _done.add(spec)
        log.info("OpenTelemetry set up by %s=%r", source, spec)
        return True


__all__ = ["install_telemetry"]
