"""Writing a capture's blobs: what fits and holds no secret is written, the rest is named.

One value must never cost the others their checkpoint. So the blobs of a
capture are written unit by unit (a unit: one name, or names pickled together)
whenever writing them all at once fails for lack of room: a 30 MB array on a
20 MB disk is skipped -- named, as a broken promise for that value -- and the
small values after it are still checkpointed. A unit whose bytes hold a
getpass() answer (:mod:`kernel.checkpoint.secrets`) is never written at all.
Errors other than "no room" (an unwritable or corrupt store) still fail the
whole capture: the previous checkpoint then stays the latest, which is a state
that existed.
"""

from __future__ import annotations

import dataclasses

from kernel.checkpoint.pickling import Pickled
from kernel.checkpoint.secrets import HOLDS_SECRET, Secrets
from kernel.core.text import human_size
from kernel.store.base import BlobSpaceError, BlobStore


@dataclasses.dataclass
class Written:
    """One unit whose blobs are durable."""

    names: tuple[str, ...]
    pickled: Pickled
    blob: str
    buffers: list[str]


@dataclasses.dataclass
class Refused:
    """Why a name's blob was not written; ``broken``: a promise broke (no room), not a choice."""

    reason: str
    broken: bool = False


def write_units(
    blobs: BlobStore, units: list[tuple[tuple[str, ...], Pickled]], alone: dict[str, Pickled], secrets: Secrets
) -> tuple[list[Written], dict[str, Refused], int]:
    """Write each unit's stream and buffers; returns the written units, the refused
    names (with why) and the bytes written. ``alone``: each name's own pickle, to
    say which member of a refused group held the secret."""
    refused: dict[str, Refused] = {}
    clean = []
    for names, pickled in units:
        if secrets.found_in(pickled):
            holders = [n for n in names if secrets.found_in(alone[n])] or list(names)
            for name in names:
                why = HOLDS_SECRET if name in holders else f"shares objects with {', '.join(holders)}, which {HOLDS_SECRET}"
                refused[name] = Refused(why)
        else:
            clean.append((names, pickled))
    try:
        with blobs.batch():
            stored = blobs.put_many([view for _names, p in clean for view in (p.stream, *p.buffers)])
    except BlobSpaceError:
        return _one_by_one(blobs, clean, refused)
    digests = iter(stored)
    written = [Written(names, p, next(digests)[0], [next(digests)[0] for _ in p.buffers]) for names, p in clean]
    return written, refused, sum(n for _digest, n in stored)


def _one_by_one(
    blobs: BlobStore, units: list[tuple[tuple[str, ...], Pickled]], refused: dict[str, Refused]
) -> tuple[list[Written], dict[str, Refused], int]:
    """The store is short of room: write unit by unit, skipping those that do not fit
    (blobs already written are not written again: content addressing)."""
    written: list[Written] = []
    total = 0
    with blobs.batch():
        for names, pickled in units:
            try:
                stored = blobs.put_many([pickled.stream, *pickled.buffers])
            except BlobSpaceError as exc:
                why = f"no room in the store for its {human_size(pickled.size)} ({exc})"[:300]
                for name in names:
                    refused[name] = Refused(why, broken=True)
                continue
            total += sum(n for _digest, n in stored)
            written.append(Written(names, pickled, stored[0][0], [d for d, _n in stored[1:]]))
    return written, refused, total


__all__ = ["Refused", "Written", "write_units"]
