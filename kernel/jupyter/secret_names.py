"""Which environment variables and ``%config`` traits are never written to the
store with the session state: secrets, by name or by the look of their value.

The rule (documented in the README): a name that is one of PyREPL3's or
Resonate's credentials, or that contains PASSWORD, PASSWD, SECRET, TOKEN, KEY
or CREDENTIAL (in any case); or a value holding a URL with a password
(``scheme://user:pass@host``). Such variables are stored by name only.
"""

from __future__ import annotations

import re

#: Never stored, whatever their names say: the checkpoint signing key and the engine's tokens.
NEVER_STORED = frozenset({"PYREPL3_KEY", "PYREPL3_TOKEN", "RESONATE_TOKEN"})
#: A variable or trait whose name contains one of these is taken for a secret.
SECRET_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL")
_URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")


def looks_secret(name: str, value: object = "") -> bool:
    """Whether ``name`` (with ``value``) must never be written to the store."""
    upper = name.upper()
    if upper in NEVER_STORED or any(word in upper for word in SECRET_WORDS):
        return True
    return isinstance(value, str) and _URL_WITH_PASSWORD.search(value) is not None


__all__ = ["NEVER_STORED", "SECRET_WORDS", "looks_secret"]
