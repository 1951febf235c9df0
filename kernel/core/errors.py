"""Errors of PyREPL3's own machinery, with the spec's codes where they apply.

They live in an importable module (not ``__main__``) so they survive the
SDK's error round trip and can be caught by user code.
"""

from __future__ import annotations


class PyRepl3Error(Exception):
    """Base class. ``code`` is the spec's error code (RES00x) or ``None``."""

    code: str | None = None

    def __str__(self) -> str:
        text = super().__str__()
        return f"[{self.code}] {text}" if self.code else text


class PromiseTimeoutError(PyRepl3Error, TimeoutError):
    code = "RES001"


class CheckpointNotFoundError(PyRepl3Error, LookupError):
    code = "RES002"


class DependencyNotRegisteredError(PyRepl3Error, LookupError):
    code = "RES003"


class EngineConnectionError(PyRepl3Error, ConnectionError):
    code = "RES004"


class AuthenticationError(PyRepl3Error, PermissionError):
    code = "RES005"


class StoreError(PyRepl3Error):
    """The durable store cannot be used; the message says what and where."""


class StoreCorruptError(StoreError):
    pass


class StoreLockedError(StoreError):
    pass


class StoreUnavailableError(StoreError, EngineConnectionError):
    """The store opens but cannot be written (or read) now: locked past the busy
    timeout, read-only, full, a permission or I/O failure. A lost engine (RES004):
    the kernel turns durability off, says why, and reconnects by itself."""


class ConfigurationError(PyRepl3Error, ValueError):
    """A setting has a value PyREPL3 cannot use; the message names the setting."""
