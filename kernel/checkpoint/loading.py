"""Loading a manifest's values back into a namespace, one unit (blob) at a time.

Each unit is a name, or names pickled together (:mod:`kernel.checkpoint.groups`),
and each can fail alone: a missing or corrupt blob, a value that does not
unpickle, a value excluded now (``PYREPL3_CHECKPOINT_EXCLUDE`` / ``%durable
exclude`` apply to restores too: an excluded value is never unpickled, nor are
the values pickled together with it), or a value whose loading killed an
earlier start (:mod:`kernel.checkpoint.poison`). Whatever fails is skipped and
named; the rest comes back.

Large buffers are opened lazily (:class:`kernel.store.chunks.Filling`): a unit
whose stream cannot read them while it is unpickled (numpy arrays) is bound at
once and its buffers arrive in the background, every chunk verified before it
is copied in (:mod:`kernel.checkpoint.lazy` says what waits for them); any
other unit waits for its buffers, verified, before it is unpickled. The streams
themselves are always read whole and verified first.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
from collections.abc import Set
from typing import Any

from kernel.checkpoint.lazy import PENDING, reads_no_buffer
from kernel.checkpoint.manifest import Manifest
from kernel.checkpoint.pickling import restoring_into
from kernel.checkpoint.poison import LoadGuard
from kernel.core.errors import StoreError
from kernel.store.base import BlobCorruptError, BlobMissingError, BlobStore
from kernel.store.chunks import Filling


@dataclasses.dataclass
class Loaded:
    restored: dict[str, Any]
    skipped: dict[str, str]
    units: list[list[str]]  # the names of each unit that came back, for the incremental state
    excluded: list[str]  # skipped because excluded now (the user's choice, not a failure)


def load_values(manifest: Manifest, namespace: dict, blobs: BlobStore, *, exclude: Set[str], guard: LoadGuard) -> Loaded:
    """Put the manifest's values into ``namespace`` (names not in it are left alone)."""
    skipped: dict[str, str] = dict(manifest.skipped)
    restored: dict[str, Any] = {}
    excluded: list[str] = []
    units: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for name, entry in manifest.entries.items():
        if name in exclude:
            skipped[name] = "excluded"
            excluded.append(name)
        elif entry.kind == "module":
            try:
                module = importlib.import_module(entry.module or name)
                for sub in entry.submodules:
                    importlib.import_module(sub)
            except Exception as exc:  # noqa: BLE001 - report and go on
                skipped[name] = f"module {entry.module} could not be imported ({type(exc).__name__}: {exc})"
                continue
            namespace[name] = restored[name] = module
        elif entry.blob is None:
            skipped[name] = "manifest entry has no blob"
        else:
            units.setdefault((entry.blob, tuple(entry.group) or (name,)), []).append(name)

    poisoned = guard.poisoned()
    for key, members in list(units.items()):
        blob, together = key
        if blob in poisoned:
            why = f"loading it killed the kernel at an earlier start, so it is skipped ({guard.hint()})"
        elif held := sorted(set(together) & set(exclude)):
            why = f"pickled together with excluded {', '.join(held)}, so not loaded"
        else:
            continue
        for name in members:
            skipped[name] = why
        del units[key]

    # Newest pickle last: when several blobs carry one notebook class, the newest state wins.
    order = sorted(units, key=lambda key: manifest.entries[units[key][0]].pickled_at)
    wanted = [d for key in order for d in manifest.entries[units[key][0]].buffers]
    PENDING.forget(name for key in order for name in units[key])
    opened = iter(blobs.open_buffers(wanted, lazy=True))
    loaded: list[list[str]] = []
    with restoring_into(namespace), guard.restoring():
        for key in order:
            members = units[key]
            entry = manifest.entries[members[0]]
            buffers = [next(opened) for _ in entry.buffers]
            try:
                for buf in buffers:
                    if isinstance(buf, Exception):
                        raise buf
                stream = blobs.get(entry.blob)  # type: ignore[arg-type]
                fillings = [b for b in buffers if isinstance(b, Filling)]
                if fillings and not reads_no_buffer(stream):
                    for filling in fillings:
                        filling.wait()
                    fillings = []
                buffers = [b.buffer if isinstance(b, Filling) else b for b in buffers]
            except StoreError as exc:
                for name in members:
                    skipped[name] = _blob_problem(exc)
                continue
            try:
                with guard.loading(key[0], list(key[1])):
                    value = pickle.loads(stream, buffers=buffers)
                values = value if entry.group else (value,)
                if len(values) != len(key[1]):
                    raise ValueError(f"blob holds {len(values)} values, the manifest expects {len(key[1])}")
            except Exception as exc:  # noqa: BLE001 - report and go on
                for name in members:
                    skipped[name] = f"could not be unpickled ({type(exc).__name__}: {exc})"[:300]
                continue
            for name, v in zip(key[1], values, strict=True):
                if name in members:
                    namespace[name] = restored[name] = v
            if fillings:
                PENDING.add({name: restored[name] for name in members}, fillings)
            loaded.append(members)
    return Loaded(restored, skipped, loaded, sorted(excluded))


def _blob_problem(exc: StoreError) -> str:
    if isinstance(exc, BlobMissingError):
        return f"its saved data is missing ({exc})"
    if isinstance(exc, BlobCorruptError):
        return f"its saved data is corrupt ({exc})"
    return f"its saved data cannot be read ({exc})"


__all__ = ["Loaded", "load_values"]
