"""Secrets never shown: DSNs and URLs with their passwords and tokens masked.

Every message, log line and listing that names an engine goes through
:func:`redact` (one DSN or URL) or :func:`scrub` (a driver's error message that
may echo a connection string back).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

_SECRET_PARAMS = {"password", "token", "secret", "key", "apikey", "api_key"}


#: ``key=value`` or ``key = 'quoted value'`` in a libpq keyword/value connection string.
_KEYWORD = re.compile(r"""(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|[^\s']*)""")


#: libpq's connection keywords that tell a keyword string from a path with ``=`` in it.
_LIBPQ = {"host", "hostaddr", "port", "dbname", "user", "password", "passfile", "service", "sslmode", "options",
          "application_name", "connect_timeout", "target_session_attrs", "sslrootcert", "sslcert", "sslkey"}


def is_keyword_dsn(text: str) -> bool:
    """A libpq keyword/value connection string (``host=... dbname=...``), not a path or URL:
    nothing but ``key=value`` pairs, one of them a libpq keyword."""
    text = text.strip()
    if "://" in text or "=" not in text or _KEYWORD.sub("", text).strip():
        return False
    return any(m["key"].lower() in _LIBPQ for m in _KEYWORD.finditer(text))


def _keyword_secrets(text: str) -> list[str]:
    found = []
    for m in _KEYWORD.finditer(text):
        if m["key"].lower() in _SECRET_PARAMS:
            value = m["value"]
            found.append(value)
            if value.startswith("'") and value.endswith("'") and len(value) >= 2:
                found.append(value[1:-1].replace("\\'", "'").replace("\\\\", "\\"))
    return [v for v in found if v]


def redact(url: str) -> str:
    """A DSN or URL (or a libpq keyword string) with its password (and token-like values) hidden."""
    if "://" not in url:
        return _KEYWORD.sub(lambda m: f"{m['key']}=***" if m["key"].lower() in _SECRET_PARAMS else m[0], url) if "=" in url else url
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
        if raw and "://" not in raw and "=" in raw:
            text = text.replace(raw, redact(raw))
            for secret in sorted(_keyword_secrets(raw), key=len, reverse=True):
                text = text.replace(secret, "***")
            continue
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
