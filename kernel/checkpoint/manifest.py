"""What a namespace checkpoint is on the record: the manifest, and the reports of a capture or restore.

A :class:`Manifest` maps each saved name to an :class:`Entry` (content hash of
its blob, type, size, how to restore it). It is small and plain data -- it
travels as JSON inside the checkpoint promise and is what the signature covers
-- while the values themselves live in the content-addressed blob store.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Literal

import msgspec

from kernel.core.models import Model
from kernel.store.digests import HASH_NAME

#: Bumped when a manifest written by this code could not be read by older code.
#: 2: a checkpoint record may hold a delta manifest (:mod:`kernel.checkpoint.chain`).
FORMAT = 2


class Entry(Model, kw_only=True):
    """How to bring back one name."""

    kind: Literal["pickle", "module"]
    type: str  # qualified type name of the value, for display
    size: int = 0  # bytes this value takes when pickled on its own (stream + buffers)
    blob: str | None = None  # pickle stream (of the value, or of the tuple of ``group`` values)
    blob_size: int = 0
    buffers: list[str] = []  # out-of-band buffers of that stream, in pickle order
    buffer_sizes: list[int] = []
    group: list[str] = []  # names pickled together in ``blob``, in tuple order; empty = just this name
    module: str | None = None  # for kind == "module"
    submodules: list[str] = []  # ``import a.b.c`` binds ``a``; restoring ``a`` must import a.b.c too
    pickled_at: float = 0.0  # later pickles win when two blobs carry the same notebook class

    @classmethod
    def module_import(cls, module: str, submodules: list[str], pickled_at: float) -> Entry:
        """A module bound to a name: restored by importing it (and ``submodules``) again."""
        return cls.model_construct(  # built from trusted parts: skip validation, it is the hot path
            kind="module",
            type="module",
            size=0,
            blob=None,
            blob_size=0,
            buffers=[],
            buffer_sizes=[],
            group=[],
            module=module,
            submodules=submodules,
            pickled_at=pickled_at,
        )


class Manifest(Model, kw_only=True):
    """One checkpoint of a namespace. JSON via ``model_dump(mode="json")`` / ``model_validate``."""

    format: int = FORMAT
    id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)
    created: float = msgspec.field(default_factory=time.time)
    hash: str = HASH_NAME
    entries: dict[str, Entry] = {}
    skipped: dict[str, str] = {}  # name -> why it is not in this checkpoint
    changed: list[str] = []  # names whose saved value differs from the previous manifest's
    removed: list[str] = []  # names in the previous manifest that are gone from the namespace
    #: Kernel-level session state (working directory, sys.path, environment, extensions, %config,
    #: matplotlib) as plain JSON data, so the signature covers it; {} in checkpoints older than it.
    state: dict[str, Any] = msgspec.field(default_factory=dict)

    def blob_sizes(self) -> dict[str, int]:
        """Every blob this checkpoint needs, with its size."""
        sizes: dict[str, int] = {}
        for entry in self.entries.values():
            if entry.blob is not None:
                sizes[entry.blob] = entry.blob_size
            sizes.update(zip(entry.buffers, entry.buffer_sizes, strict=False))
        return sizes

    @property
    def total_size(self) -> int:
        """Bytes of blob data this checkpoint refers to (shared blobs counted once)."""
        return sum(self.blob_sizes().values())


@dataclasses.dataclass
class CaptureReport:
    """What one capture did, for the kernel's notices and ``%durable``."""

    skipped: dict[str, str]
    changed: list[str]
    removed: list[str]
    written_bytes: int  # bytes of new blobs actually written
    seconds: float
    pickled: list[str] = dataclasses.field(default_factory=list)  # names re-pickled by this capture
    full: bool = False  # every name was treated as touched
    full_reason: str | None = None
    #: Skipped names whose promise broke (their blob did not fit in the store), not by choice.
    broken: list[str] = dataclasses.field(default_factory=list)
    #: Names newly skipped, or skipped for another reason than before (with ``changed`` and
    #: ``removed``: all a delta manifest holds, :mod:`kernel.checkpoint.chain`).
    reskipped: list[str] = dataclasses.field(default_factory=list)
    stored_size: int = 0  # bytes of blob data the whole checkpoint refers to (shared blobs counted once)


@dataclasses.dataclass
class RestoreReport:
    """What one restore brought back, and what it could not, by name."""

    restored: list[str]
    skipped: dict[str, str]
    seconds: float
    excluded: list[str] = dataclasses.field(default_factory=list)  # skipped by the user's choice (excluded now)
    #: Newer checkpoints passed over because their signature did not verify (id -> why).
    refused: dict[str, str] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line for the user: what came back and what did not, and why."""
        n = len(self.restored)
        shown = ", ".join(self.restored[:8]) + (", …" if n > 8 else "")
        text = f"restored {n} name{'' if n == 1 else 's'}" + (f" ({shown})" if n else "") + f" in {self.seconds:.2f}s"
        if self.skipped:
            text += "; skipped " + "; ".join(f"{name}: {why}" for name, why in sorted(self.skipped.items()))
        if self.refused:
            text += "; refused newer checkpoints: " + "; ".join(f"{cid}: {why}" for cid, why in sorted(self.refused.items()))
        return text


__all__ = ["FORMAT", "CaptureReport", "Entry", "Manifest", "RestoreReport"]
