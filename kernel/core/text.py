"""How PyREPL3 writes sizes, times and code for people: one spelling each.

The ``pyrepl3`` command, the ``%durable`` magic and checkpoint notices all
show byte counts, promise timestamps and the first line of a cell; they share
these helpers so the same value reads the same everywhere. Standard library
only: this module is imported on the kernel's hot path.
"""

from __future__ import annotations

import time

_UNITS = ("B", "KB", "MB", "GB")
_FACTORS = {"K": 1024, "M": 1024**2, "G": 1024**3}


def human_size(n: float) -> str:
    """``512 B``, ``1.5 KB``, ``200.0 MB``: binary units, GB the largest."""
    for unit in _UNITS:
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable: GB always returns")


def parse_size(text: str) -> int | None:
    """``200MB``, ``1.5GB``, ``4096`` -> bytes; 0 means no limit (``None``).

    Raises ``ValueError`` (naming ``text``) when it is not a size.
    """
    t = text.strip().upper().removesuffix("B")
    factor = _FACTORS.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in _FACTORS else t
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 200MB") from None
    return value or None


def local_time(ms: float | None, missing: str = "-") -> str:
    """Promise milliseconds as local ``YYYY-MM-DD HH:MM:SS``; ``missing`` when there is none."""
    return missing if not ms else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def first_line(code: str, width: int = 50) -> str:
    """The first non-blank line of a cell, cut to ``width`` with an ellipsis."""
    line = code.strip().splitlines()[0] if code.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


__all__ = ["first_line", "human_size", "local_time", "parse_size"]
