"""What PyREPL3 tells the user about itself, and how loudly.

A notebook run under PyREPL3 must look the same as under ipykernel, so most of
what the kernel has to say never becomes a cell output. Two levels:

- ``INFO``: what was restored, what a checkpoint skipped, a reconnect that
  worked, an interrupted execution that was rejected. Nothing the user relies
  on is broken. It goes to ``%durable`` (:class:`NoticeBook`) and the kernel's
  log at INFO (shown with PYREPL3_DEBUG=1: a kernel whose promises hold is as
  quiet on its stderr as ipykernel), never into a notebook's outputs.
- ``BROKEN``: a promise does not hold: durability is off (and why), a cell ran
  without durability, a checkpoint or a restore failed, a setting could not
  be used. It goes to the next cell's stderr too, unless ``notices_to`` is
  ``log``, and the message says how to keep it out of cells (:data:`SILENCE_HINT`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class NoticeLevel(str, Enum):
    INFO = "info"
    BROKEN = "broken"


INFO = NoticeLevel.INFO
BROKEN = NoticeLevel.BROKEN

#: Appended once to what reaches a cell: how to keep PyREPL3's messages out of cells.
SILENCE_HINT = "(PYREPL3_NOTICES=log keeps PyREPL3's messages out of cells, in the kernel log; %durable lists them)"


class Notify(Protocol):
    """How a component tells the user something (the kernel's ``notice``)."""

    def __call__(self, text: str, level: NoticeLevel = INFO) -> None: ...


@dataclass(frozen=True)
class Notice:
    level: NoticeLevel
    text: str


class NoticeBook:
    """The latest notices of a kernel, both levels, for ``%durable`` to show
    (the informational ones are nowhere else in the notebook)."""

    def __init__(self, keep: int = 20) -> None:
        self._recent: deque[Notice] = deque(maxlen=keep)

    def add(self, text: str, level: NoticeLevel) -> None:
        self._recent.append(Notice(level, text))

    def recent(self) -> list[Notice]:
        return list(self._recent)

    def lines(self) -> list[str]:
        """One line per notice, oldest first; a broken promise is marked."""
        return [("! " if n.level is BROKEN else "  ") + n.text for n in self._recent]
