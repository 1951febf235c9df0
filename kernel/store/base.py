"""What an engine gives the layers above it: the seams, as small Protocols.

One setting (``PYREPL3_STORE``) picks an engine (:mod:`kernel.store.registry`);
the session, the checkpoint layer, the CLI and ``%durable`` then talk only to
these shapes, never to an engine's module:

=====================  ==========================  ================================  ===============================
                       embedded (a path / nothing)  postgres (``postgresql://``)      http (``http(s)://``)
=====================  ==========================  ================================  ===============================
network + sources      ``EmbeddedStore``            ``PgNetwork`` (resonate-pg)       ``HttpConnection`` + ``SSEConnection``
session lock           ``flock`` under home         advisory lock in the database     lock of the ``PYREPL3_BLOBS`` place
catalog (read side)    SQLite queries               index table joined to promises    index at ``PYREPL3_BLOBS`` + ``promise.get``
checkpoint blobs       files under home             ``pyrepl3`` schema, chunked       ``PYREPL3_BLOBS``: a shared dir or a DSN
settle from outside    inbox / direct               ``promise.settle`` (the DB *is*   ``promise.settle`` over HTTP
                                                    the server)
=====================  ==========================  ================================  ===============================

A kernel calls :meth:`Engine.lock`, :meth:`Engine.network`,
:meth:`Engine.interrupted_executions` and :meth:`Engine.blobs` once at start;
the CLI and ``%durable`` use :meth:`Engine.catalog` and
:meth:`Engine.settle_from_outside`. An engine that cannot be reached raises
:class:`~kernel.core.errors.EngineConnectionError` (RES004) with the DSN/URL
redacted. Constructors do no I/O: :meth:`Engine.open` connects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from resonate_base.connections import Network, Source

from kernel.core.errors import StoreCorruptError, StoreError
from kernel.core.models import ExecutionSummary, PromiseRecord, SessionSummary
from kernel.core.locations import EngineSpec
from kernel.store.claims import Claims


class SessionLock(Protocol):
    """One live kernel per session: held from :meth:`Engine.lock` until released."""

    def release(self) -> None: ...


class Catalog(Protocol):
    """The read side (CLI, ``%durable``, hitl, checkpoint history); safe while a kernel writes."""

    def sessions(self) -> list[SessionSummary]:
        """Every session with executions, most recently active first."""
        ...

    def executions(self, session: str | None = None, limit: int | None = None) -> list[ExecutionSummary]:
        """``exec:`` promises, oldest first (the newest ``limit`` when given)."""
        ...

    def count(self, session: str, kind: str = "exec") -> dict[str, int]:
        """How many of ``session``'s promises of ``kind`` are in each state."""
        ...

    def promise(self, promise_id: str) -> PromiseRecord | None: ...

    def checkpoints(self, session: str, limit: int | None = None) -> list[PromiseRecord]:
        """``session``'s resolved checkpoint records, oldest first (the newest ``limit`` when given:
        a kernel's start reads the few it needs, not the whole history)."""
        ...

    def pending(self, session: str | None = None, kind: str | None = None) -> list[PromiseRecord]: ...

    def of_kind(self, kind: str, session: str | None = None, *, values: bool = False) -> list[PromiseRecord]:
        """Every promise of ``kind`` (of ``session``, else of every session), oldest first, for
        figures over many (``pyrepl3 stats``): id, state, times and session; ``param``, ``value``
        and ``tags`` are read and decoded only with ``values`` (else None, None and {})."""
        ...

    def close(self) -> None: ...


class BlobMissingError(StoreError):
    """A blob a checkpoint refers to is not in the store."""


class BlobCorruptError(StoreCorruptError):
    """A blob's bytes do not hash to its name (truncated, overwritten, bit rot)."""


class BlobSpaceError(StoreError):
    """The store has no room for this blob (disk full, quota, a size limit): the
    value is skipped and named, and the rest of the checkpoint is still written."""


class StoredBlob(NamedTuple):
    """One blob as the store holds it: for garbage collection."""

    digest: str
    size: int
    #: Seconds since the epoch of its last write, or of the last :meth:`BlobStore.put` that found
    #: it already there: a checkpoint being written refreshes it before its record exists.
    written_at: float


class BlobStore(Protocol):
    """Immutable, content-addressed blobs (named by :func:`kernel.store.digests.digest_of`).

    ``get`` and ``open_buffer(s)`` verify what they read: a blob that is not
    there raises :class:`BlobMissingError`, one whose bytes do not match its
    name :class:`BlobCorruptError`.
    """

    def has(self, digest: str) -> bool: ...

    def size(self, digest: str) -> int: ...

    def put(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data`` (a no-op if that content is already there); its digest."""
        ...

    def put_many(self, buffers: Sequence[object]) -> list[tuple[str, int]]:
        """Store several buffers: ``(digest, bytes written)`` for each, in order."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """Make the puts inside durable together, when the block ends."""
        ...

    def get(self, digest: str) -> bytearray: ...

    def open_buffer(self, digest: str) -> object: ...

    def open_buffers(self, digests: Iterable[str], *, lazy: bool = False) -> list[object]:
        """A private, writable buffer per digest (errors returned, not raised). ``lazy``: a large one may
        come back as a :class:`kernel.store.chunks.Filling` whose verified chunks arrive in the background."""

    def stored(self) -> Iterable[StoredBlob]:
        """Every blob held, in no particular order (for garbage collection)."""
        ...

    def delete(self, digests: Iterable[str], *, written_before: float) -> list[StoredBlob]:
        """Delete those of ``digests`` not written (nor found by a ``put``) since
        ``written_before``, checked as each is deleted; the ones deleted."""
        ...

    def close(self) -> None: ...


class Reclaimer(Protocol):
    """The store's side of reclaiming space (:mod:`kernel.checkpoint.reclaim` decides what goes).

    Checkpoint records are only ever deleted whole, never edited (they are sealed);
    pins and the note of what was reclaimed live beside them, unsigned: a pin only
    keeps something, and a note only explains an absence."""

    def checkpoint_sessions(self) -> list[str]:
        """Every session with checkpoint records."""
        ...

    def pins(self, session: str) -> dict[int, int | None]:
        """The checkpoints pinned in ``session`` (``%durable keep``): sequence number -> execution count."""
        ...

    def pin(self, session: str, seq: int, execution_count: int | None) -> None: ...

    def unpin(self, session: str, seq: int) -> bool:
        """Whether ``seq`` was pinned."""
        ...

    def delete_checkpoints(self, session: str, deleted: Sequence[tuple[str, int | None]], at: float) -> int:
        """Delete these checkpoint records (promise id, execution count) of ``session`` and
        note each as reclaimed at ``at``, in one transaction; how many were deleted."""
        ...

    def note_reclaimed(self, session: str, noted: Sequence[tuple[str, int | None]], at: float) -> None:
        """Note these checkpoints (promise id, execution count) of ``session`` as reclaimed at
        ``at`` without deleting their records (links of a kept delta chain)."""
        ...

    def reclaimed(self, session: str, execution_count: int) -> float | None:
        """When a checkpoint after ``execution_count`` was reclaimed, if one was."""
        ...

    def note_output_blobs(self, session: str, execution_id: str, digests: Sequence[str]) -> None:
        """Blobs holding large outputs of ``execution_id`` (:mod:`kernel.store.large_outputs`):
        noted before the outcome naming them is stored, and never collected."""
        ...

    def output_blobs(self) -> set[str]:
        """Every noted output blob of the store."""
        ...

    def compact(self) -> None:
        """Give the space of deleted rows back where the engine can (the embedded WAL)."""
        ...

    def footprint(self) -> dict[str, int]:
        """Bytes the store takes, by part (``records``, ``blobs``), as the engine counts them."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    """Where a session's durable state lives; see the module docstring."""

    spec: EngineSpec

    @property
    def where(self) -> Path | str:
        """What ``%durable`` and messages show as the store (credentials redacted)."""
        ...

    def open(self) -> Engine:
        """Connect (or check the directory); returns ``self``. Raises RES004 if unreachable."""
        ...

    def group(self, session: str) -> str:
        """The routing group of ``session``'s kernel: whoever listens on it gets its executions."""
        ...

    def lock(self, session: str, wait: float = 0.0) -> SessionLock:
        """Take ``session``'s lock, retrying for up to ``wait`` seconds."""
        ...

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        """The SDK's ``Network`` and ``Source``\\ s for ``Resonate`` (None: the network is its own source)."""
        ...

    def worker_network(self, group: str, pid: str, claims: Claims | None = None) -> tuple[Network, list[Source] | None]:
        """The ``Network`` and ``Source``\\ s of a ``pyrepl3 worker`` in ``group``: it gets the
        remote calls any session sends that group. Raises :class:`ConfigurationError`
        (naming ``PYREPL3_STORE``) where workers cannot share the store (embedded).
        ``claims``: take no more tasks than it allows (where the engine's queue is read, not pushed)."""
        ...

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        """``exec:`` promises a dead kernel of ``session`` left pending, oldest first.

        Called with the session lock held, after :meth:`network`; leases the dead
        kernel still holds are given back so the engine re-delivers them now."""
        ...

    def catalog(self) -> Catalog: ...

    def blobs(self) -> BlobStore: ...

    def reclaimer(self) -> Reclaimer:
        """Deleting unretained checkpoints and pins (embedded and Postgres; the http engine has none)."""
        ...

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> PromiseRecord:
        """Settle a pending promise from a process that does not own its session
        (the CLI answering a prompt); returns the settled record."""
        ...

    def healthy(self) -> bool:
        """False once the engine's connection is known to be lost (no I/O)."""
        ...

    def close(self) -> None: ...


__all__ = [
    "BlobCorruptError",
    "BlobMissingError",
    "BlobStore",
    "Catalog",
    "Engine",
    "Reclaimer",
    "SessionLock",
    "StoredBlob",
]
