"""Large blobs named by their list of chunk digests, so they can be verified chunk by chunk.

A blob of :data:`CHUNKED_MIN` bytes or more is cut into :data:`CHUNK`-sized
chunks. Each chunk's BLAKE3 digest (32 bytes) goes into a :class:`ChunkList`,
and the blob's *name* is the SHA-256 of that list's encoding (which starts
with a tag no flat blob's content is hashed with, so the two kinds of name
cannot be confused). The checkpoint manifest names blobs and is signed, so
the signature covers the list, and the list covers every chunk: a reader
can check any chunk the moment it has it, without hashing the rest, which is
what lets a restore hand back a large array before all of it is read (see
:class:`Filling`). The stores keep the list with the blob: after its bytes in
the same file (a footer says how long it is), or as the last chunk row.

Why BLAKE3 for the chunks: it is a cryptographic hash (a changed chunk cannot
be made to match its digest, which xxHash could not promise), and on this
class of machine one core hashes about twice as fast as OpenSSL's SHA-256
with SHA extensions. Small blobs keep their plain SHA-256 names
(:mod:`kernel.store.digests`): they are read whole anyway.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import mmap
import struct
import threading
from collections.abc import Callable

import blake3

from kernel.core.errors import StoreError
from kernel.store.base import BlobCorruptError
from kernel.store.digests import byte_view, digest_of

CHUNK = 4 << 20
#: Blobs this large or larger are chunked: below it, reading the whole blob costs less than two chunks' bookkeeping.
CHUNKED_MIN = 8 << 20
DIGEST_SIZE = 32
_TAG = b"pyrepl3 chunk list v1\0"
_HEAD = struct.Struct("<QI")  # blob size, chunk size
_FOOTER = struct.Struct("<I8s")  # length of the encoded list, magic
_MAGIC = b"PYR3CHKL"
FOOTER_SIZE = _FOOTER.size
LIST_OVERHEAD = len(_TAG) + _HEAD.size  # an encoded list's bytes besides its digests


def chunk_digest(data: object) -> bytes:
    """One chunk's digest (the binding releases the GIL while it hashes)."""
    return blake3.blake3(data).digest()  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class ChunkList:
    """The digests of a blob's chunks: what its name is the hash of."""

    size: int
    chunk: int
    digests: bytes  # DIGEST_SIZE bytes per chunk, in order

    @classmethod
    def of(cls, view: memoryview, chunk: int = CHUNK) -> ChunkList:
        """Hash ``view`` chunk by chunk (BLAKE3 spreads each chunk over the cores)."""
        digests = b"".join(
            blake3.blake3(view[i : i + chunk], max_threads=blake3.blake3.AUTO).digest() for i in range(0, view.nbytes, chunk)
        )
        return cls(view.nbytes, chunk, digests)

    @property
    def count(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def encode(self) -> bytes:
        return _TAG + _HEAD.pack(self.size, self.chunk) + self.digests

    @property
    def name(self) -> str:
        """The blob's name: SHA-256 of the encoded list."""
        return hashlib.sha256(self.encode()).hexdigest()

    def trailer(self) -> bytes:
        """What follows the blob's bytes in a file: the list, then a footer saying how long it is."""
        encoded = self.encode()
        return encoded + _FOOTER.pack(len(encoded), _MAGIC)

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk
        return start, min(start + self.chunk, self.size)

    def check(self, index: int, data: object, name: str) -> None:
        """Raise :class:`BlobCorruptError` unless ``data`` is chunk ``index`` as written."""
        expected = self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
        if chunk_digest(data) != expected:
            start, end = self.span(index)
            raise BlobCorruptError(f"blob {name} is corrupt: chunk {index} (bytes {start}-{end}) does not match its digest")

    @classmethod
    def decode(cls, encoded: bytes, name: str) -> ChunkList | None:
        """The list ``encoded`` holds if it is the one blob ``name`` is named by, else None."""
        if not encoded.startswith(_TAG) or hashlib.sha256(encoded).hexdigest() != name:
            return None
        size, chunk = _HEAD.unpack_from(encoded, len(_TAG))
        digests = encoded[len(_TAG) + _HEAD.size :]
        if chunk <= 0 or len(digests) != -(-size // chunk) * DIGEST_SIZE:
            return None
        return cls(size, chunk, digests)


def blob_name(data: object) -> str:
    """The name a store gives a blob holding ``data``: its chunk list's, if large enough, else its SHA-256."""
    view = byte_view(data)
    return ChunkList.of(view).name if view.nbytes >= CHUNKED_MIN else digest_of(view)


def list_length(footer: bytes) -> int | None:
    """The encoded list's length from a file's last :data:`FOOTER_SIZE` bytes; None if there is no footer."""
    if len(footer) != FOOTER_SIZE:
        return None
    length, magic = _FOOTER.unpack(footer)
    return length if magic == _MAGIC else None


_scratch = threading.local()


class Filling:
    """A blob's bytes arriving in private, anonymous memory, one verified chunk at a time.

    :attr:`buffer` is handed out at once (an array is built over it); chunks are
    read into a per-thread scratch buffer, checked against the list, and only
    then copied in. So the buffer never holds a byte that failed (or has not
    had) its check: at worst zeros. It shares nothing with the store's file
    (a blob deleted or rewritten later changes nothing), and it is writable.
    :meth:`wait` returns once every chunk is in, or raises what went wrong.
    """

    def __init__(self, name: str, chunks: ChunkList) -> None:
        self.name = name
        self.chunks = chunks
        self.buffer = mmap.mmap(-1, chunks.size) if chunks.size else bytearray()
        self._address = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer)) if chunks.size else 0
        self._left = chunks.count
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.error: BaseException | None = None
        if not self._left:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def fill(self, index: int, read_into: Callable[[memoryview, int], int]) -> None:
        """Read, check and copy chunk ``index``; ``read_into(view, offset)`` fills ``view`` from the store."""
        if self._done.is_set():  # failed already: the rest is not worth reading
            return
        try:
            start, end = self.chunks.span(index)
            scratch = getattr(_scratch, "buffer", None)
            if scratch is None or len(scratch) < self.chunks.chunk:
                scratch = _scratch.buffer = bytearray(self.chunks.chunk)
            view = memoryview(scratch)[: end - start]
            got = 0
            while got < view.nbytes:
                n = read_into(view[got:], start + got)
                if not n:
                    raise BlobCorruptError(f"blob {self.name} is corrupt: short read at byte {start + got} of {self.chunks.size}")
                got += n
            self.chunks.check(index, view, self.name)
            ctypes.memmove(self._address + start, ctypes.addressof(ctypes.c_char.from_buffer(scratch)), end - start)
        except StoreError as exc:
            self.failed(exc)
            return
        except BaseException as exc:  # noqa: BLE001 - kept for the waiters, as a store error
            self.failed(StoreError(f"blob {self.name} cannot be read ({type(exc).__name__}: {exc})"))
            return
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
            self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if self.error is not None:
            raise self.error


__all__ = ["CHUNK", "CHUNKED_MIN", "DIGEST_SIZE", "FOOTER_SIZE", "LIST_OVERHEAD", "ChunkList", "Filling", "blob_name", "chunk_digest", "list_length"]
