"""Which engine a store setting names, and opening it: the one door into kernel.store.

``PYREPL3_STORE`` (or ``--store``, or the traitlet ``DurableKernel.store``) is
a directory or nothing (the embedded store), a ``postgresql://`` DSN or an
``http(s)://`` Resonate server URL. The scheme picks an entry of
:data:`ENGINES`; the entry's module is imported only then, so a kernel on the
embedded store never imports psycopg or the Postgres and http engines (aiohttp
comes with the SDK itself: ``resonate.connections`` imports its HTTP transport).

This is also the one place where the engines' settings are read from the
environment (:data:`SETTINGS`): the engines take them as constructor
parameters, so a later settings object can replace this table.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kernel.core.settings import EngineSpec, bool_setting, float_setting, resolve_blobs, resolve_engine, resolve_home
from kernel.store.base import Engine

#: Seconds to wait for an engine (PYREPL3_ENGINE_TIMEOUT) when it is unset or 0.
DEFAULT_ENGINE_TIMEOUT = 5.0


@dataclass(frozen=True)
class EngineEntry:
    """An engine class, named by module so that it is imported only when chosen,
    and the settings (keys of :data:`SETTINGS`) its constructor takes."""

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
    return urlsplit(target).scheme.lower() if "://" in target else ""


def _timeout(env: Mapping[str, str], home: str) -> float:
    return float_setting(env, "PYREPL3_ENGINE_TIMEOUT", DEFAULT_ENGINE_TIMEOUT) or DEFAULT_ENGINE_TIMEOUT


def _token(env: Mapping[str, str], home: str) -> str | None:
    return env.get("PYREPL3_TOKEN") or env.get("RESONATE_TOKEN") or None


#: How each engine setting is read: ``(env, home argument) -> value``.
SETTINGS: dict[str, Callable[[Mapping[str, str], str], Any]] = {
    # PYREPL3_HOME / the traitlet: where the embedded store lives by default.
    "home": lambda env, home: resolve_home(env, home),
    # PYREPL3_FSYNC: survive power loss too, not only a crash.
    "fsync": lambda env, home: bool_setting(env, "PYREPL3_FSYNC", False),
    # PYREPL3_ENGINE_TIMEOUT: seconds before an engine counts as unreachable.
    "timeout": _timeout,
    # PYREPL3_BLOBS: where the http engine keeps blobs, index and locks.
    "blobs": lambda env, home: resolve_blobs(env),
    # PYREPL3_TOKEN / RESONATE_TOKEN: the Resonate server's bearer token.
    "token": _token,
}


def open_engine(env: Mapping[str, str], *, store: str = "", home: str = "", timeout: float | None = None) -> Engine:
    """The engine ``PYREPL3_STORE`` / ``store`` selects, opened (``home`` is the embedded default).

    Raises :class:`~kernel.core.errors.ConfigurationError` for a setting it
    cannot use and RES004 for an engine it cannot reach.
    """
    spec = resolve_engine(env, store)
    entry = ENGINES[scheme_of(spec.target)]
    _timeout(env, home)  # a bad PYREPL3_ENGINE_TIMEOUT is an error whichever engine is chosen
    options = {name: SETTINGS[name](env, home) for name in entry.settings}
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
def opened(env: Mapping[str, str], *, store: str = "", home: str = "") -> Iterator[Engine]:
    """``with opened(...) as engine:`` for one-shot users (the CLI, ``kernel.durable.hitl``)."""
    engine = open_engine(env, store=store, home=home)
    try:
        yield engine
    finally:
        engine.close()


__all__ = ["ENGINES", "SETTINGS", "EngineEntry", "open_engine", "opened", "scheme_of"]
