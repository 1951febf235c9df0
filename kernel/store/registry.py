"""Which engine a store setting names, and opening it: the one door into kernel.store.

``PYREPL3_STORE`` (or ``--store``, or the traitlet ``DurableKernel.store``) is
a directory or nothing (the embedded store), a ``postgresql://`` DSN or an
``http(s)://`` Resonate server URL. The scheme picks an entry of
:data:`ENGINES`; the entry's module is imported only then, so a kernel on the
embedded store never imports psycopg or the Postgres and http engines (aiohttp
comes with the SDK itself: ``resonate.connections`` imports its HTTP transport).

The engines take their settings as constructor parameters; :data:`OPTIONS`
says which field of :class:`~kernel.core.settings.Settings` each one is.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kernel.core.locations import EngineSpec, resolve_blobs, resolve_engine, resolve_home
from kernel.core.redaction import is_keyword_dsn
from kernel.core.settings import Settings
from kernel.store.base import Engine

#: Seconds to wait for an engine (PYREPL3_ENGINE_TIMEOUT) when it is unset or 0.
DEFAULT_ENGINE_TIMEOUT = 5.0


@dataclass(frozen=True)
class EngineEntry:
    """An engine class, named by module so that it is imported only when chosen,
    and the options (keys of :data:`OPTIONS`) its constructor takes."""

    module: str
    cls: str
    settings: tuple[str, ...] = ()

    def load(self) -> Callable[..., Engine]:
        return getattr(importlib.import_module(self.module), self.cls)  # type: ignore[no-any-return]


_EMBEDDED = EngineEntry("kernel.store.embedded.engine", "EmbeddedEngine", ("home", "fsync"))
_POSTGRES = EngineEntry("kernel.store.postgres.engine", "PostgresEngine", ("timeout",))
_HTTP = EngineEntry("kernel.store.http.engine", "HttpEngine", ("blobs", "timeout", "token"))

#: URL scheme -> engine ("" is a directory, or nothing: the embedded store).
ENGINES: dict[str, EngineEntry] = {
    "": _EMBEDDED,
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
    "http": _HTTP,
    "https": _HTTP,
}


def scheme_of(target: str) -> str:
    if is_keyword_dsn(target):
        return "postgresql"
    return urlsplit(target).scheme.lower() if "://" in target else ""


#: How each engine option comes from the settings.
OPTIONS: dict[str, Callable[[Settings], Any]] = {
    # PYREPL3_HOME / the traitlet: where the embedded store lives by default.
    "home": resolve_home,
    # PYREPL3_FSYNC: survive power loss too, not only a crash.
    "fsync": lambda s: s.fsync,
    # PYREPL3_ENGINE_TIMEOUT: seconds before an engine counts as unreachable (0 = the default).
    "timeout": lambda s: s.engine_timeout or DEFAULT_ENGINE_TIMEOUT,
    # PYREPL3_BLOBS: where the http engine keeps blobs, index and locks.
    "blobs": resolve_blobs,
    # PYREPL3_TOKEN / RESONATE_TOKEN: the Resonate server's bearer token.
    "token": lambda s: s.token or None,
}


def open_engine(settings: Settings, *, timeout: float | None = None) -> Engine:
    """The engine ``settings.store`` selects, opened (``settings.home`` is the embedded default).

    Raises :class:`~kernel.core.errors.ConfigurationError` for a setting it
    cannot use and RES004 for an engine it cannot reach.
    """
    settings.check("store", "home", "blobs", "fsync", "engine_timeout")
    spec = resolve_engine(settings)
    entry = ENGINES[scheme_of(spec.target)]
    options = {name: OPTIONS[name](settings) for name in entry.settings}
    if timeout is not None and "timeout" in options:
        options["timeout"] = timeout
    return _opened(entry.load(), spec, options)


def _opened(make: Callable[..., Engine], spec: EngineSpec, options: dict[str, Any]) -> Engine:
    engine = make(spec, **options)
    try:
        return engine.open()
    except BaseException:
        engine.close()
        raise


@contextlib.contextmanager
def opened(settings: Settings) -> Iterator[Engine]:
    """``with opened(settings) as engine:`` for one-shot users (the CLI, ``kernel.durable.hitl``)."""
    engine = open_engine(settings)
    try:
        yield engine
    finally:
        engine.close()


__all__ = ["ENGINES", "OPTIONS", "EngineEntry", "open_engine", "opened", "scheme_of"]
