"""getpass() answers: never in a checkpoint, under any name or inside any value.

A secret bound to a name is left out by identity. But a secret also travels
inside other values (``creds = {'password': pw}``, ``cfg.password = pw``,
``url = f"https://u:{pw}@host"``, ``pw.encode()``), so before any blob is
written its bytes -- the pickle stream and every out-of-band buffer -- are
searched for every secret answered in this session, in the encodings a pickle
or an array holds a ``str`` in: UTF-8 (pickle's ``BINUNICODE`` opcodes, whose
characters are always contiguous: pickle frames split only between opcodes;
``bytes`` values too) and UTF-32-LE (a numpy ``<U`` array). A value whose bytes
hold one is skipped and named. This costs nothing until a getpass() is
answered; afterwards one regular-expression scan per new blob (no copies: it
runs over the memoryviews). The catch: a very short secret (one or two
characters) also matches unrelated bytes, and those values are skipped too --
the safe side of a secret.
"""

from __future__ import annotations

import re

from kernel.checkpoint.pickling import Pickled

#: How a str is laid out in a pickle stream or a buffer.
_ENCODINGS = ("utf-8", "utf-32-le")

#: Why a value holding a secret is not in a checkpoint.
HOLDS_SECRET = "holds a getpass() answer (never stored)"
IS_SECRET = "a getpass() secret (never stored)"


class Secrets:
    """The getpass() answers of this process, and the search for them in pickles."""

    def __init__(self) -> None:
        self._kept: list[str] = []  # kept alive so their ids stay theirs
        self.ids: set[int] = set()
        self._pattern: re.Pattern[bytes] | None = None

    def keep_out(self, secret: str) -> str:
        self._kept.append(secret)
        self.ids.add(id(secret))
        if secret:
            forms = {s.encode(enc, "surrogatepass") for enc in _ENCODINGS for s in self._kept if s}
            self._pattern = re.compile(b"|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))
        return secret

    def found_in(self, pickled: Pickled) -> bool:
        """Whether any secret's bytes are in this pickle's stream or buffers."""
        pattern = self._pattern
        if pattern is None:
            return False
        return any(pattern.search(part) is not None for part in (pickled.stream, *pickled.buffers))


__all__ = ["HOLDS_SECRET", "IS_SECRET", "Secrets"]
