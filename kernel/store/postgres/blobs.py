"""Checkpoint blobs in Postgres: the same API as :class:`kernel.store.base.BlobStore` (as :class:`kernel.store.embedded.blobs.FileBlobStore`),
stored in the engine's own database so every machine can reach them.

A blob is a header row in ``pyrepl3.blobs`` (digest, size, chunk count) and its
bytes in ``pyrepl3.blob_chunks`` as ``CHUNK``-sized ``bytea`` rows. Header and
chunks are written in one transaction, so a reader sees a complete blob or
none; the header insert (``ON CONFLICT DO NOTHING``) decides which of two
kernels writing the same content does the work.

Streaming both ways keeps a large value in memory once: writes ``COPY`` slices
of the caller's buffer; reads stream the chunks (single-row mode) into one
preallocated buffer, hashing as they arrive (each byte once). The name is
checked before anything is unpickled, as on disk. A blob of
:data:`~kernel.store.chunks.CHUNKED_MIN` bytes or more is named by its chunk
list (:mod:`kernel.store.chunks`), kept as one more row after its data rows,
and each chunk is checked as soon as its bytes are in. There is no file to map
and one connection to share with the engine, so a restore reads a blob whole
before it is used: lazily restored arrays are an embedded-store feature.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg

from kernel.core.redaction import redact
from kernel.core.errors import StoreError
from kernel.core.clock import SYSTEM, Clock
from kernel.store.base import BlobCorruptError, BlobMissingError, BlobSpaceError, StoredBlob
from kernel.store.chunks import CHUNKED_MIN, ChunkList
from kernel.store.digests import HASH_NAME, byte_view, check_digest, digest_of
from kernel.store.postgres.link import PgLink, unreachable

#: Bytes per chunk row: big enough that round trips don't matter, small enough
#: that one chunk in flight is noise next to the value itself.
CHUNK = 4 << 20
#: Blobs deleted per transaction by garbage collection (the link is shared with the kernel's writes).
GC_BATCH = 200


class PgBlobStore:
    """Immutable, content-addressed blobs in the ``pyrepl3`` schema of ``link``'s database."""

    def __init__(self, link: PgLink, *, chunk_size: int = CHUNK, clock: Clock = SYSTEM) -> None:
        self.link = link
        self.clock = clock
        self.chunk_size = chunk_size
        self._batch: contextlib.ExitStack | None = None
        self.where = redact(link.dsn)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        with self.link.lock:
            try:
                yield self.link.conn
            except psycopg.OperationalError as exc:
                raise unreachable(self.link.dsn, exc, self.link.setting) from None

    def has(self, digest: str) -> bool:
        with self._conn() as conn:
            return conn.execute("SELECT 1 FROM pyrepl3.blobs WHERE digest = %s", (check_digest(digest),)).fetchone() is not None

    def size(self, digest: str) -> int:
        with self._conn() as conn:
            row = conn.execute("SELECT size FROM pyrepl3.blobs WHERE digest = %s", (check_digest(digest),)).fetchone()
        if row is None:
            raise BlobMissingError(f"blob {digest} is missing (Postgres blob store at {self.where})")
        return int(row[0])

    # -- writing ---------------------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview) -> str:
        view = byte_view(data)
        chunks = ChunkList.of(view) if view.nbytes >= CHUNKED_MIN else None
        digest = chunks.name if chunks is not None else digest_of(view)
        self._store(digest, view, chunks)
        return digest

    def put_many(self, buffers: Sequence[object]) -> list[tuple[str, int]]:
        out = []
        with self.batch():
            for buf in buffers:
                view = byte_view(buf)
                chunks = ChunkList.of(view) if view.nbytes >= CHUNKED_MIN else None
                digest = chunks.name if chunks is not None else digest_of(view)
                out.append((digest, self._store(digest, view, chunks)))
        return out

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write every blob inside the block in one transaction (one commit, not
        one per blob), begun by the first write: a block that writes nothing costs nothing."""
        if self._batch is not None:
            yield
            return
        self._batch = contextlib.ExitStack()
        try:
            yield
        except BaseException as exc:
            self._batch.__exit__(type(exc), exc, exc.__traceback__)  # rolls back
            raise
        else:
            self._batch.close()  # commits
        finally:
            self._batch = None

    def _begin_batch(self) -> None:
        if self._batch is not None and not getattr(self._batch, "begun", False):
            conn = self._batch.enter_context(self._conn())
            self._batch.enter_context(conn.transaction())
            self._batch.begun = True  # type: ignore[attr-defined]

    def _store(self, digest: str, view: memoryview, chunks: ChunkList | None = None) -> int:
        """Write ``view`` as blob ``digest`` unless it exists; return bytes written.

        Each blob is its own (sub)transaction -- a savepoint inside a batch -- so
        one that does not fit (disk full, a bytea/row limit) is rolled back alone."""
        try:
            return self._store_one(digest, view, chunks)
        except (psycopg.errors.DiskFull, psycopg.errors.ProgramLimitExceeded) as exc:
            raise BlobSpaceError(f"cannot write blob {digest} ({view.nbytes} bytes) to {self.where}: {exc}") from exc

    def _store_one(self, digest: str, view: memoryview, listed: ChunkList | None) -> int:
        self._begin_batch()
        with self._conn() as conn, conn.transaction():
            # Found again, its time is now: garbage collection leaves a blob a checkpoint in progress
            # reuses alone until that checkpoint's record exists (see delete; the row lock orders the two).
            row = conn.execute(
                "UPDATE pyrepl3.blobs SET created_at = %s WHERE digest = %s RETURNING size", (self.clock.now_ms(), digest)
            ).fetchone()
            if row is not None:
                if int(row[0]) == view.nbytes:
                    return 0
                self._delete(conn, digest)  # same name, wrong size: a damaged copy
            size = view.nbytes
            chunks = (size + self.chunk_size - 1) // self.chunk_size
            claimed = conn.execute(
                "INSERT INTO pyrepl3.blobs VALUES (%s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING",
                (digest, size, chunks, self.clock.now_ms()),
            ).rowcount
            if not claimed:  # another kernel wrote the same content just now
                return 0
            if chunks:
                with conn.cursor().copy("COPY pyrepl3.blob_chunks (digest, seq, data) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "int4", "bytea"])
                    for seq in range(chunks):
                        start = seq * self.chunk_size
                        copy.write_row((digest, seq, view[start : start + self.chunk_size]))
                    if listed is not None:  # the chunk list, after the data rows
                        copy.write_row((digest, chunks, listed.encode()))
        return size

    @staticmethod
    def _delete(conn: psycopg.Connection[Any], digest: str) -> None:
        conn.execute("DELETE FROM pyrepl3.blob_chunks WHERE digest = %s", (digest,))
        conn.execute("DELETE FROM pyrepl3.blobs WHERE digest = %s", (digest,))

    # -- reading ---------------------------------------------------------------

    def get(self, digest: str) -> bytearray:
        """The blob's bytes, verified against its digest (a chunked one chunk by chunk, as they arrive)."""
        check_digest(digest)
        with self._conn() as conn:
            row = conn.execute("SELECT size, chunks FROM pyrepl3.blobs WHERE digest = %s", (digest,)).fetchone()
            if row is None:
                raise BlobMissingError(f"blob {digest} is missing (Postgres blob store at {self.where})")
            size, rows = int(row[0]), int(row[1])
            listed = None
            if size >= CHUNKED_MIN:
                found = conn.execute(
                    "SELECT data FROM pyrepl3.blob_chunks WHERE digest = %s AND seq = %s", (digest, rows)
                ).fetchone()
                listed = ChunkList.decode(bytes(found[0]), digest) if found is not None else None
                if listed is not None and listed.size != size:
                    listed = None
            data = bytearray(size)
            view = memoryview(data)
            hasher = hashlib.new(HASH_NAME) if listed is None else None
            got = checked = 0
            problem = ""
            cursor = conn.cursor(binary=True)
            query = "SELECT data FROM pyrepl3.blob_chunks WHERE digest = %s" + (" AND seq < %s" if listed else "") + " ORDER BY seq"
            try:
                for (chunk,) in cursor.stream(query, (digest, rows) if listed else (digest,)):
                    n = len(chunk)
                    if got + n > size:
                        problem = f"its chunks hold more than {size} bytes"
                        break
                    view[got : got + n] = chunk
                    got += n
                    if hasher is not None:
                        hasher.update(chunk)
                    while listed is not None and checked < listed.count and listed.span(checked)[1] <= got:
                        start, end = listed.span(checked)
                        listed.check(checked, view[start:end], digest)
                        checked += 1
            except BlobCorruptError as exc:
                problem = str(exc).split(" is corrupt: ", 1)[-1]
            if not problem and got != size:
                problem = f"short read ({got} of {size} bytes)"
            if not problem and hasher is not None and hasher.hexdigest() != digest:
                problem = f"its content hashes to {hasher.hexdigest()}"
            if problem:
                self._corrupt(conn, digest, problem)
        return data

    def open_buffer(self, digest: str) -> object:
        """A private, writable buffer with the blob's verified bytes (for out-of-band pickle buffers)."""
        return self.get(digest)

    def open_buffers(self, digests: Iterable[str], *, lazy: bool = False) -> list[object]:
        """Each blob read whole and verified (``lazy`` is not offered here: see the module docstring)."""
        out: list[object] = []
        for digest in digests:
            try:
                out.append(self.open_buffer(digest))
            except StoreError as exc:
                out.append(exc)
        return out

    # -- garbage collection ----------------------------------------------------

    def stored(self) -> list[StoredBlob]:
        with self._conn() as conn:
            rows = conn.execute("SELECT digest, size, created_at FROM pyrepl3.blobs").fetchall()
        return [StoredBlob(d, int(size), at / 1000) for d, size, at in rows]

    def delete(self, digests: Iterable[str], *, written_before: float) -> list[StoredBlob]:
        """One transaction per ``GC_BATCH`` blobs, each header deleted only if still older than
        ``written_before`` (a ``put`` that touched it first holds its row until it commits)."""
        wanted = [check_digest(d) for d in digests]
        freed: list[StoredBlob] = []
        for start in range(0, len(wanted), GC_BATCH):
            with self._conn() as conn, conn.transaction():
                rows = conn.execute(
                    "DELETE FROM pyrepl3.blobs WHERE digest = ANY(%s) AND created_at < %s RETURNING digest, size, created_at",
                    (wanted[start : start + GC_BATCH], int(written_before * 1000)),
                ).fetchall()
                if rows:
                    conn.execute("DELETE FROM pyrepl3.blob_chunks WHERE digest = ANY(%s)", ([r[0] for r in rows],))
            freed.extend(StoredBlob(d, int(size), at / 1000) for d, size, at in rows)
        return freed

    def _corrupt(self, conn: psycopg.Connection[Any], digest: str, why: str) -> None:
        """Drop a corrupt blob (so the next checkpoint writes it again) and raise."""
        with contextlib.suppress(psycopg.Error), conn.transaction():
            self._delete(conn, digest)
        raise BlobCorruptError(
            f"blob {digest} in the Postgres blob store at {self.where} is corrupt: {why}; it was removed"
        )

    def close(self) -> None:
        """The connection belongs to the engine; nothing to release here."""


__all__ = ["CHUNK", "PgBlobStore"]
