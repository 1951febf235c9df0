"""Where the durable state lives, derived from :class:`~kernel.core.settings.Settings`:
the engine a store setting names, the blob place of a Resonate server, the
embedded store's home, and the session id.

Pure functions of the settings (no environment reads), so the CLI resolves
them exactly as a kernel does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from jupyter_core.paths import jupyter_data_dir

from kernel.core.errors import ConfigurationError
from kernel.core.redaction import is_keyword_dsn, redact
from kernel.core.settings import Settings

STORE_FILE = "store.sqlite3"


@dataclass(frozen=True)
class EngineSpec:
    """Which engine ``PYREPL3_STORE`` selects: ``embedded`` (a directory),
    ``postgres`` (a ``postgresql://`` DSN) or ``http`` (a Resonate server URL)."""

    kind: str
    target: str
    setting: str

    def __str__(self) -> str:
        return f"{self.kind} engine at {redact(self.target)}"


def _scheme(raw: str) -> str:
    return urlsplit(raw).scheme.lower() if "://" in raw else ""


def resolve_engine(settings: Settings) -> EngineSpec:
    """``PYREPL3_STORE`` (or the traitlet ``DurableKernel.store``, or ``--store``); empty = embedded."""
    setting = settings.source("store")
    raw = settings.store
    if not raw:
        return EngineSpec("embedded", "", setting)
    scheme = _scheme(raw)
    if scheme in ("postgresql", "postgres") or is_keyword_dsn(raw):
        # A libpq keyword string (host=... dbname=...) is a Postgres DSN too, never a directory.
        return EngineSpec("postgres", raw, setting)
    if scheme in ("http", "https"):
        return EngineSpec("http", raw, setting)
    if scheme:
        msg = (
            f"{setting}={redact(raw)!r}: unknown engine scheme {scheme!r}; use a directory for the embedded store, "
            "postgresql://... for Postgres (resonate-pg) or http(s)://... for a Resonate server"
        )
        raise ConfigurationError(msg)
    return EngineSpec("embedded", raw, setting)


@dataclass(frozen=True)
class BlobsSpec:
    """Where checkpoint blobs live when the engine cannot hold them itself
    (``PYREPL3_BLOBS``): a shared ``directory`` or a ``postgres`` DSN."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind} blob store at {redact(self.target)}"


def resolve_blobs(settings: Settings) -> BlobsSpec | None:
    """``PYREPL3_BLOBS``: a directory or ``postgresql://...``; empty = none."""
    raw = settings.blobs
    if not raw:
        return None
    scheme = _scheme(raw)
    if scheme in ("postgresql", "postgres"):
        return BlobsSpec("postgres", raw)
    if scheme:
        msg = f"PYREPL3_BLOBS={redact(raw)!r}: use a shared directory or a postgresql://... DSN"
        raise ConfigurationError(msg)
    return BlobsSpec("directory", str(Path(raw).expanduser()))


def default_home() -> Path:
    """``<jupyter data dir>/pyrepl3``: the home when no setting names one (and where the key file lives)."""
    return Path(jupyter_data_dir()) / "pyrepl3"


def resolve_home(settings: Settings) -> Path:
    """``PYREPL3_HOME``, else the traitlet ``DurableKernel.home``, else :func:`default_home`."""
    home = Path(settings.home).expanduser() if settings.home else default_home()
    if home.exists() and not home.is_dir():
        msg = f"{settings.source('home')} points at {home}, which is not a directory"
        raise ConfigurationError(msg)
    return home


_KERNEL_FILE = re.compile(r"kernel-(?P<id>[^/]+)\.json$")


def resolve_session(settings: Settings, connection_file: str = "") -> str:
    """``PYREPL3_SESSION``, else ``JPY_SESSION_NAME`` (the notebook path), else the
    kernel id in the connection file's name, which ``restart_kernel()`` keeps."""
    if settings.session:
        return settings.session
    if settings.jupyter_session:
        return settings.jupyter_session
    if connection_file:
        name = Path(connection_file).name
        if m := _KERNEL_FILE.search(name):
            return m.group("id")
        return Path(name).stem
    return "default"


def store_path(home: Path) -> Path:
    return home / STORE_FILE
