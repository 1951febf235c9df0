"""Modules the kernel process imports but runs only when they are used.

The Resonate SDK's ``resonate.connections`` package imports its HTTP
transport, and so aiohttp, whatever the engine; running aiohttp's import
takes about as long as all of ipykernel's start. Installed by
``kernel/__main__.py`` before anything else, so it affects the kernel process
only (not the ``pyrepl3`` command or programs that import ``kernel``).
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types


class _RunOnFirstUse(types.ModuleType):
    """A module whose code runs when one of its attributes is first looked up.

    Unlike :class:`importlib.util.LazyLoader`, an ``import`` statement (which
    reads ``__spec__``) does not run it: only a real use does, such as
    ``aiohttp.ClientSession``, ``from aiohttp import web`` (``__path__`` is
    left out until then) or any attribute a cell's ``import aiohttp`` reads.
    """

    _lock = threading.RLock()

    def __getattr__(self, attr: str) -> object:  # only for attributes the module does not have yet
        with self._lock:
            if type(self) is _RunOnFirstUse:
                spec = self.__spec__
                self.__class__ = types.ModuleType
                if spec.submodule_search_locations is not None:
                    self.__path__ = spec.submodule_search_locations
                spec.loader.exec_module(self)  # type: ignore[union-attr]
        return getattr(self, attr)


def run_on_first_use(name: str) -> None:
    """Import module ``name`` without running it until it is used, unless it is
    imported already or missing.

    The Resonate SDK's ``resonate.connections`` package imports its HTTP
    transport, and so aiohttp, whatever the engine; running aiohttp's import
    takes about as long as all of ipykernel's start, and only the http engine
    uses it. The SDK touches ``aiohttp.*`` only inside functions, so a kernel on
    the embedded or Postgres engine never runs aiohttp's code; any other user
    (the http engine, a cell's ``import aiohttp``) gets the real module on first use.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    if hasattr(module, "__path__"):
        del module.__path__  # a submodule import is a use: it must run the package first
    module.__class__ = _RunOnFirstUse
    sys.modules[name] = module
