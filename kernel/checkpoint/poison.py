"""Values that kill the kernel when loaded: remembered, and skipped at the next start.

Unpickling runs code (``__setstate__``, ``__reduce__`` callables, C extensions):
a value whose loading ends the process (``os._exit``, a segfault, the OOM
killer) would end every later start of its session the same way. So before
each unit of a restore is unpickled, :class:`RestoreGuard` writes a small
marker file naming its blob and names, and removes it once the unit is
loaded (a plain write: it only has to outlive the process, not the machine).
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

    def loading(self, blob: str, names: list[str]) -> contextlib.AbstractContextManager[None]:
        """Around the unpickling of one unit."""

    def hint(self) -> str:
        """How to let the next start try a poisoned value again."""


class NoGuard:
    """Remembers nothing (unit tests; a restore outside a kernel)."""

    def poisoned(self) -> dict[str, list[str]]:
        return {}

    @contextlib.contextmanager
    def loading(self, blob: str, names: list[str]) -> Iterator[None]:
        yield

    def hint(self) -> str:
        return ""


class RestoreGuard:
    """The marker and poisoned-blob files of one session, in ``directory`` (``<home>/restoring``)."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = Path(directory)
        self.marker = self.directory / f"{key}.loading.json"
        self.poisoned_file = self.directory / f"{key}.poisoned.json"

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
    def loading(self, blob: str, names: list[str]) -> Iterator[None]:
        try:
            _write(self.marker, {"blob": blob, "names": names})
        except OSError as exc:  # no marker: a poisoned value would not be recognised; the restore goes on
            log.warning("could not write the restore marker %s: %s", self.marker, exc)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self.marker.unlink()

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
