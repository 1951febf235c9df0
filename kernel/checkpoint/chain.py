"""Delta manifests: a checkpoint record holds what its cell changed, and a full manifest now and then.

A cell that adds one name must write one entry, not the whole namespace's
manifest again (10,000 variables made that 3 MB per trivial cell). So a
checkpoint record's ``manifest`` is either

* **full** -- the whole :class:`~kernel.checkpoint.manifest.Manifest` (record
  field ``base`` equal to its own sequence number; absent in records older than
  deltas, which are all full); or
* a **delta** -- the same fields, but ``entries`` holds only the changed entries,
  ``skipped`` only the names newly skipped (or for a new reason), ``removed``
  the names gone, and ``state`` is there only when the session state changed.
  ``base`` is the sequence number of the full record it builds on and
  ``parent`` the manifest id of the record just before it.

Checkpoint N is the full record at ``base`` plus every delta in (base, N], applied
in order; each record is verified on its own (its signature binds it to the
session and its promise id, hence its sequence number), and each delta's
``base`` and ``parent`` must match the chain it is applied to: a delta copied to
another sequence number, into another chain, or a chain with a record missing is
refused like any tampered checkpoint. Keeping checkpoint N therefore requires
keeping every record base..N (retention relies on exactly this).

When a full one is written (:func:`wants_full`): the first capture of a
process, after any restore but the newest checkpoint's, after a checkpoint
that was not stored, after :data:`FULL_EVERY` deltas, or when the chain's
deltas would together hold more entries than a full manifest (and more than
:data:`FULL_EVERY`: a small full one costs little either way). A cell that
rewrote everything is thus stored full. So a restore reads at most
``FULL_EVERY + 1`` records and at most about twice a full manifest's entries,
and the store holds a full manifest per ``FULL_EVERY`` cells at most.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kernel.checkpoint.manifest import CaptureReport, Manifest
from kernel.checkpoint.signing import SignatureError

#: At most this many deltas follow a full manifest (a restore reads at most this many + 1 records).
FULL_EVERY = 128


class ChainError(SignatureError):
    """A record does not fit the chain it is read in (missing, out of place, another chain's):
    refused like a record whose signature does not match."""


@dataclasses.dataclass
class Chain:
    """The chain the newest record this process wrote (or restored) belongs to."""

    base: int  # sequence number of its full record
    last: int  # sequence number of its newest record
    weight: int = 0  # entries, skipped and removed names held by its deltas, together


def wants_full(chain: Chain | None, seq: int, manifest: Manifest, report: CaptureReport) -> bool:
    """Whether record ``seq`` (holding ``manifest``, captured as ``report`` says) is written full."""
    if chain is None or chain.last != seq - 1 or seq - chain.base > FULL_EVERY:
        return True
    return chain.weight + delta_weight(report) > max(len(manifest.entries) + len(manifest.skipped), FULL_EVERY)


def delta_weight(report: CaptureReport) -> int:
    return len(report.changed) + len(report.reskipped) + len(report.removed)


def delta_body(manifest: Manifest, report: CaptureReport, previous: Manifest) -> dict[str, Any]:
    """The delta of ``manifest`` from ``previous`` (the manifest of the record before it), as JSON."""
    delta = Manifest.model_construct(
        id=manifest.id,
        created=manifest.created,
        entries={n: manifest.entries[n] for n in report.changed},
        skipped={n: manifest.skipped[n] for n in report.reskipped},
        changed=report.changed,
        removed=report.removed,
        state=manifest.state,
    )
    body = delta.model_dump(mode="json")
    if manifest.state == previous.state:
        del body["state"]  # unchanged: the chain's last state stands
    return body


def assemble(bodies: list[tuple[str, dict[str, Any]]]) -> Manifest:
    """The manifest of the last of ``bodies`` (promise id, verified record body), the first full,
    each following one a delta on the one before it (its ``parent``)."""
    first_id, first = bodies[0]
    manifest = Manifest.model_validate(first["manifest"])
    entries, skipped, state = manifest.entries, manifest.skipped, manifest.state
    last = manifest
    for pid, body in bodies[1:]:
        delta = Manifest.model_validate(body["manifest"])
        if body.get("parent") != last.id:
            raise ChainError(f"checkpoint {pid} does not follow the checkpoint before it ({first_id}'s chain); refusing it")
        for name in delta.removed:
            entries.pop(name, None)
            skipped.pop(name, None)
        for name, entry in delta.entries.items():
            skipped.pop(name, None)
            entries[name] = entry
        for name, why in delta.skipped.items():
            entries.pop(name, None)
            skipped[name] = why
        if "state" in body["manifest"]:
            state = delta.state
        last = delta
    if len(bodies) == 1:
        return manifest
    return Manifest.model_construct(
        format=last.format, id=last.id, created=last.created, hash=last.hash, entries=entries, skipped=skipped,
        changed=last.changed, removed=last.removed, state=state,
    )  # fmt: skip


__all__ = ["FULL_EVERY", "Chain", "ChainError", "assemble", "delta_body", "delta_weight", "wants_full"]
