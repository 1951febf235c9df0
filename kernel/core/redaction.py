"""Secrets never shown: DSNs and URLs with their passwords and tokens masked.

Every message, log line and listing that names an engine goes through
:func:`redact` (one DSN or URL) or :func:`scrub` (a driver's error message that
may echo a connection string back).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

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
