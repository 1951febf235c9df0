"""Where settings come from: environment first, then traitlets, then defaults.

Kept free of kernel imports so the CLI resolves settings exactly as a kernel does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from jupyter_core.paths import jupyter_data_dir

from kernel.core.errors import ConfigurationError

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


def resolve_engine(env: Mapping[str, str], configured: str = "") -> EngineSpec:
    """``PYREPL3_STORE``, else the traitlet ``DurableKernel.store``; empty = embedded."""
    setting = "PYREPL3_STORE" if env.get("PYREPL3_STORE") else "DurableKernel.store"
    raw = (env.get("PYREPL3_STORE") or configured).strip()
    if not raw:
        return EngineSpec("embedded", "", setting)
    scheme = urlsplit(raw).scheme.lower() if "://" in raw else ""
    if scheme in ("postgresql", "postgres"):
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


_SECRET_PARAMS = {"password", "token", "secret", "key", "apikey", "api_key"}


def redact(url: str) -> str:
    """A DSN or URL with its password (and token-like query values) hidden."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = "&".join(
        f"{k}=***" if k.lower() in _SECRET_PARAMS else f"{k}={v}"
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, *secrets: str) -> str:
    """``text`` (an error message, say) with every DSN/URL in ``secrets`` redacted
    and their passwords and tokens masked wherever they appear on their own.

    Database drivers echo a malformed connection string back in their errors;
    this makes such a message safe to print or log.
    """
    for raw in secrets:
        if not raw or "://" not in raw:
            continue
        text = text.replace(raw, redact(raw))
        parts = urlsplit(raw)
        hidden = [parts.password or ""]
        hidden += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in _SECRET_PARAMS]
        for secret in hidden:
            if len(secret) >= 3:
                text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


@dataclass(frozen=True)
class BlobsSpec:
    """Where checkpoint blobs live when the engine cannot hold them itself
    (``PYREPL3_BLOBS``): a shared ``directory`` or a ``postgres`` DSN."""

    kind: str
    target: str

    def __str__(self) -> str:
        return f"{self.kind} blob store at {redact(self.target)}"


def resolve_blobs(env: Mapping[str, str], configured: str = "") -> BlobsSpec | None:
    """``PYREPL3_BLOBS`` (else the traitlet value): a directory or ``postgresql://...``; empty = none."""
    raw = (env.get("PYREPL3_BLOBS") or configured).strip()
    if not raw:
        return None
    scheme = urlsplit(raw).scheme.lower() if "://" in raw else ""
    if scheme in ("postgresql", "postgres"):
        return BlobsSpec("postgres", raw)
    if scheme:
        msg = f"PYREPL3_BLOBS={redact(raw)!r}: use a shared directory or a postgresql://... DSN"
        raise ConfigurationError(msg)
    return BlobsSpec("directory", str(Path(raw).expanduser()))


def resolve_home(env: Mapping[str, str], configured: str = "") -> Path:
    """``PYREPL3_HOME``, else the traitlet ``DurableKernel.home``, else ``<jupyter data dir>/pyrepl3``."""
    raw = env.get("PYREPL3_HOME") or configured
    home = Path(raw).expanduser() if raw else Path(jupyter_data_dir()) / "pyrepl3"
    if home.exists() and not home.is_dir():
        setting = "PYREPL3_HOME" if env.get("PYREPL3_HOME") else "DurableKernel.home"
        msg = f"{setting} points at {home}, which is not a directory"
        raise ConfigurationError(msg)
    return home


_KERNEL_FILE = re.compile(r"kernel-(?P<id>[^/]+)\.json$")


def resolve_session(env: Mapping[str, str], connection_file: str = "") -> str:
    """``PYREPL3_SESSION``, else ``JPY_SESSION_NAME`` (the notebook path), else the
    kernel id in the connection file's name, which ``restart_kernel()`` keeps."""
    for key in ("PYREPL3_SESSION", "JPY_SESSION_NAME"):
        if value := env.get(key, "").strip():
            return value
    if connection_file:
        name = Path(connection_file).name
        if m := _KERNEL_FILE.search(name):
            return m.group("id")
        return Path(name).stem
    return "default"


def store_path(home: Path) -> Path:
    return home / STORE_FILE


def bool_setting(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    msg = f"{key}={raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)"
    raise ConfigurationError(msg)


def float_setting(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        msg = f"{key}={raw!r} is not a non-negative number of seconds"
        raise ConfigurationError(msg)
    return value
