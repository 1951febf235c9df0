"""Values that kill the kernel when loaded: remembered, and skipped at the next start.

Unpickling runs code (``__setstate__``, ``__reduce__`` callables, C extensions):
a value whose loading ends the process (``os._exit``, a segfault, the OOM
killer) would end every later start of its session the same way. So before
each unit of a restore is unpickled, :class:`RestoreGuard` writes a small
marker file naming its blob and names, and blanks it once the unit is
loaded (a plain write: it only has to outlive the process, not the machine).
The file is opened once per restore and rewritten in place, one ``pwrite``
before a unit and one after: a restore of 2,000 small values spent 90 ms
creating, renaming and deleting 2,000 files. JSON ignores the blanks that pad
a shorter record, and a file of blanks names nothing.
A marker found at the next restore means that start died right there: the
blob is added to the session's list of poisoned blobs, and every restore
skips a poisoned blob from then on and says so, naming the values (a value
re-created with the same content is the same blob, and is skipped too).
Deleting the list (:attr:`RestoreGuard.poisoned_file`) lets the next start
try again.

The window a marker is up is the unpickling of one unit, so a kernel killed
from outside lands in it only while a unit with an expensive load is being
unpickled -- then that value is skipped, named, once, like a poisoned one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class LoadGuard(Protocol):
    """What :func:`kernel.checkpoint.loading.load_values` asks of a guard."""

    def poisoned(self) -> dict[str, list[str]]:
        """Poisoned blob digest -> the names it held (a marker left behind is added first)."""

    def restoring(self) -> contextlib.AbstractContextManager[None]:
        """Around a whole restore (every :meth:`loading` of it)."""

    def loading(self, blob: str, names: list[str]) -> contextlib.AbstractContextManager[None]:
        """Around the unpickling of one unit."""

    def hint(self) -> str:
        """How to let the next start try a poisoned value again."""


class NoGuard:
    """Remembers nothing (unit tests; a restore outside a kernel)."""

    def poisoned(self) -> dict[str, list[str]]:
        return {}

    def restoring(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def loading(self, blob: str, names: list[str]) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def hint(self) -> str:
        return ""


class RestoreGuard:
    """The marker and poisoned-blob files of one session, in ``directory`` (``<home>/restoring``)."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = Path(directory)
        self.marker = self.directory / f"{key}.loading.json"
        self.poisoned_file = self.directory / f"{key}.poisoned.json"
        #: The marker, open while :meth:`restoring`; the longest record written to it.
        self._fd: int | None = None
        self._written = 0

    def poisoned(self) -> dict[str, list[str]]:
        known = _read(self.poisoned_file) or {}
        left = _read(self.marker)
        if isinstance(left, dict) and isinstance(left.get("blob"), str):
            # The last restore of this session died while unpickling this blob.
            known[left["blob"]] = [str(n) for n in left.get("names", [])]
            try:
                _write(self.poisoned_file, known)
                self.marker.unlink()
            except OSError as exc:
                log.warning("could not record the poisoned value %s: %s", left, exc)
        return {str(k): list(v) for k, v in known.items() if isinstance(v, list)}

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._fd, self._written = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 0
        except OSError as exc:  # no marker: a poisoned value would not be recognised; the restore goes on
            log.warning("could not open the restore marker %s: %s", self.marker, exc)
        try:
            yield
        finally:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)
                    self.marker.unlink()

    @contextlib.contextmanager
    def loading(self, blob: str, names: list[str]) -> Iterator[None]:
        if self._fd is None:  # outside restoring(), or the marker could not be opened
            yield
            return
        record = json.dumps({"blob": blob, "names": names}).encode()
        self._mark(record.ljust(self._written))
        self._written = max(self._written, len(record))
        try:
            yield
        finally:
            self._mark(b" " * self._written)

    def _mark(self, data: bytes) -> None:
        """One write at the start of the marker (a process killed around it leaves either version)."""
        try:
            os.pwrite(self._fd, data, 0)  # type: ignore[arg-type]
        except OSError as exc:
            log.warning("could not write the restore marker %s: %s", self.marker, exc)

    def hint(self) -> str:
        return f"delete {self.poisoned_file} to try it again"


def _read(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write(path: Path, data: object) -> None:
    """Write a small JSON file atomically (owner-only)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(temp, path)


__all__ = ["LoadGuard", "NoGuard", "RestoreGuard"]
