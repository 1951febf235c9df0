"""A content-addressed store of immutable blobs: the values behind namespace checkpoints.

Why content addressing: a checkpoint is taken after every cell, and most values
do not change from one cell to the next. Naming a blob by the hash of its bytes
means a value that did not change is never written twice, any number of
checkpoints can share it, and reading it back can prove that the bytes are the
ones that were written (a corrupt or truncated file is detected, not loaded).

Why the write protocol: a blob's final name must only ever hold its complete
content, even if the process dies mid-write. Each blob is written to a temp file
in ``<root>/tmp``, fsynced, then renamed to ``<root>/<aa>/<rest of digest>``; the
directory is fsynced before the blob is reported durable. A crash leaves at
worst a stray temp file (swept on the next open), never a partial blob under a
real name.

How blobs are named is :mod:`kernel.store.digests` (SHA-256) and, for large
ones, :mod:`kernel.store.chunks` (a list of chunk digests, kept after the
blob's bytes in its file); the errors are those of :class:`kernel.store.base.BlobStore`.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kernel.core.errors import StoreError
from kernel.store.base import BlobCorruptError, BlobMissingError, BlobSpaceError
from kernel.store.chunks import CHUNK, CHUNKED_MIN, DIGEST_SIZE, FOOTER_SIZE, LIST_OVERHEAD, ChunkList, Filling, list_length
from kernel.store.digests import HASH_NAME, byte_view, check_digest, digest_of
from kernel.store.embedded.collection import CollectableFiles, fsync_dir
from kernel.store.modes import PRIVATE, Modes

_WRITE_CHUNK = 8 << 20  # os.write of a whole 125 MB view is slower than 8 MB slices
_PARALLEL_MIN = 4 << 20  # below this, a thread hand-off costs more than it saves
_STALE_TEMP_SECONDS = 3600
#: errno values meaning "this blob does not fit", not "the store is broken".
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class FileBlobStore(CollectableFiles):
    """Immutable blobs under ``root`` (``<store home>/blobs``), named by their SHA-256.

    The constructor touches nothing; :meth:`open` creates the directories and
    sweeps temp files a crash left behind."""

    def __init__(self, root: Path, *, fsync: bool = False, modes: Modes = PRIVATE) -> None:
        """``fsync``: make every blob survive power loss, not only a crash of the
        process (the same promise the SQLite store makes with ``synchronous=FULL``);
        it costs about 0.8 ms per checkpoint that writes anything. ``modes``: the
        permissions of what it creates (owner-only unless a shared directory says otherwise)."""
        self.root = Path(root)
        self.fsync = fsync
        self.modes = modes
        self._tmp = self.root / "tmp"
        self._quarantine = self.root / "corrupt"
        self._deferred: set[Path] | None = None
        self._deferred_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._fill_pool: ThreadPoolExecutor | None = None  # lazy restores' reads: never queued before a capture's writes

    def open(self) -> FileBlobStore:
        try:
            self.modes.make_dirs(self._tmp)
        except OSError as exc:
            raise StoreError(f"cannot create the blob store at {self.root}: {exc}") from exc
        self._sweep_temps()
        return self

    # -- naming ----------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` lives (validated: a digest is never a path)."""
        check_digest(digest)
        return self.root / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """The blob's size in bytes (its chunk list, kept in the same file, not counted)."""
        path = self.path(digest)
        try:
            with open(path, "rb", buffering=0) as f:
                chunks = self._chunk_list(digest, f.fileno())
                return chunks.size if chunks is not None else os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise BlobMissingError(f"blob {digest} is missing ({path})") from None

    # -- writing ---------------------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data``; return its digest. A no-op (no write) if the blob already exists."""
        return self._put_counted(byte_view(data))[0]

    def put_many(self, buffers: Sequence[object]) -> list[tuple[str, int]]:
        """Store several buffers; return ``(digest, bytes written)`` for each, in order.

        Large buffers are hashed and written on a small thread pool: hashlib and
        ``os.write`` release the GIL, so one buffer is hashed while another is
        written, which roughly halves a first checkpoint of several big arrays.
        """
        views = [byte_view(b) for b in buffers]
        big = [i for i, v in enumerate(views) if v.nbytes >= _PARALLEL_MIN]
        results: list[tuple[str, int] | None] = [None] * len(views)
        futures = {}
        if len(big) > 1:
            pool = self._executor()
            futures = {i: pool.submit(self._put_counted, views[i]) for i in big}
        for i, view in enumerate(views):
            if i not in futures:
                results[i] = self._put_counted(view)
        for i, future in futures.items():
            results[i] = future.result()
        return results  # type: ignore[return-value]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Defer directory fsyncs to the end of the block (one per directory, not per blob).

        Every blob written inside is durable when the block exits normally; the
        file contents themselves are still fsynced before each rename.
        """
        if self._deferred is not None:  # nested: the outer batch syncs
            yield
            return
        self._deferred = set()
        try:
            yield
        finally:
            with self._deferred_lock:
                dirs, self._deferred = self._deferred, None
        for directory in sorted(dirs):
            fsync_dir(directory)

    def _put_counted(self, view: memoryview) -> tuple[str, int]:
        if view.nbytes >= CHUNKED_MIN:
            chunks = ChunkList.of(view)
            return chunks.name, self._store(chunks.name, view, chunks.trailer())
        digest = digest_of(view)
        return digest, self._store(digest, view)

    def _store(self, digest: str, view: memoryview, trailer: bytes = b"") -> int:
        """Write ``view`` (then ``trailer``) as blob ``digest`` unless a complete one exists; return bytes written."""
        final = self.path(digest)
        try:
            if final.stat().st_size == view.nbytes + len(trailer):
                self._touch(final)
                return 0
            # Same name, wrong size: a damaged copy. Replace it (the rename below is atomic).
        except FileNotFoundError:
            pass  # also when garbage collection took it between the stat and the touch: written again
        shard = final.parent
        if not shard.is_dir():
            try:
                self.modes.make_dirs(shard)
            except OSError as exc:
                raise (BlobSpaceError if exc.errno in _NO_ROOM else StoreError)(f"cannot create {shard}: {exc}") from exc
            self._sync_later(self.root)
        temp = self._tmp / f"{digest[:16]}-{uuid.uuid4().hex}"
        try:
            self._write(temp, view, self.fsync, self.modes.file, trailer)
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            kind = BlobSpaceError if exc.errno in _NO_ROOM else StoreError
            raise kind(f"cannot write blob {digest} to {final}: {exc}") from exc
        self._sync_later(shard)
        return view.nbytes

    @staticmethod
    def _touch(final: Path) -> None:
        """A checkpoint being written uses this blob again: its time is now, so garbage
        collection leaves it alone for its grace period, until the checkpoint's record
        exists (see :meth:`delete`). FileNotFoundError: it was just collected."""
        try:
            os.utime(final)
        except FileNotFoundError:
            raise
        except OSError:
            pass  # another user's blob in a shared directory: its own time stands

    @staticmethod
    def _write(temp: Path, view: memoryview, fsync: bool, mode: int, trailer: bytes = b"") -> None:
        """Write (and, if asked, fsync) ``view`` then ``trailer`` to a new file ``temp``, straight from the caller's memory."""
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            if view.nbytes >= _WRITE_CHUNK:
                try:  # a hint (not all filesystems have it), and a fast "does not fit"
                    os.posix_fallocate(fd, 0, view.nbytes)
                except OSError as exc:
                    if exc.errno in _NO_ROOM:
                        raise
            offset = 0
            while offset < view.nbytes:
                offset += os.write(fd, view[offset : offset + _WRITE_CHUNK])
            offset = 0
            while offset < len(trailer):
                offset += os.write(fd, trailer[offset:])
            if fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        os.close(fd)

    def _sync_later(self, directory: Path) -> None:
        if not self.fsync:
            return
        with self._deferred_lock:
            if self._deferred is not None:
                self._deferred.add(directory)
                return
        fsync_dir(directory)

    # -- reading ---------------------------------------------------------------

    def get(self, digest: str) -> bytearray:
        """The blob's bytes, verified against its digest (a chunked blob chunk by chunk, in parallel)."""
        path = self.path(digest)
        try:
            with open(path, "rb", buffering=0) as f:
                chunks = self._chunk_list(digest, f.fileno())
                if chunks is not None:
                    filling = self._filling(digest, path, f.fileno(), chunks, self._executor())
                    self._settle(digest, path, filling)
                    return bytearray(filling.buffer)  # type: ignore[arg-type]
                size = os.fstat(f.fileno()).st_size
                data = bytearray(size)
                got = _read_into(f.fileno(), memoryview(data), 0)
        except FileNotFoundError:
            raise BlobMissingError(f"blob {digest} is missing ({path})") from None
        if got != size:
            self._corrupt(digest, path, f"short read ({got} of {size} bytes)")
        self._verify(digest, path, data)
        return data

    def open_buffer(self, digest: str) -> object:
        """A verified, private, writable buffer with the blob's bytes, for out-of-band pickle buffers.

        Anonymous memory, not a mapping of the file: what the user's array holds
        never changes with the file (a blob rewritten or truncated later would
        show through a copy-on-write mapping's untouched pages, or fault)."""
        filling = self.open_buffers([digest], lazy=True)[0]
        if isinstance(filling, StoreError):
            raise filling
        if isinstance(filling, Filling):
            self._settle(digest, self.path(digest), filling)
            return filling.buffer
        return filling

    def open_buffers(self, digests: Iterable[str], *, lazy: bool = False) -> list[object]:
        """A buffer for each digest; errors are returned, not raised.

        ``lazy``: a chunked blob comes back at once as a :class:`Filling`, its
        chunks read and verified in the background (its list is verified now);
        otherwise every buffer is whole and verified when this returns."""
        digests = list(digests)

        def one(digest: str) -> object:
            path = self.path(digest)
            try:
                with open(path, "rb", buffering=0) as f:
                    chunks = self._chunk_list(digest, f.fileno())
                    if chunks is None:
                        return self._flat_buffer(digest, path, f.fileno())
                    filling = self._filling(digest, path, f.fileno(), chunks, self._fills())
                if not lazy:
                    self._settle(digest, path, filling)
                    return filling.buffer
                return filling
            except FileNotFoundError:
                return BlobMissingError(f"blob {digest} is missing ({path})")
            except StoreError as exc:
                return exc

        if len(digests) < 2:
            return [one(d) for d in digests]
        return list(self._executor().map(one, digests))

    def _flat_buffer(self, digest: str, path: Path, fd: int) -> object:
        size = os.fstat(fd).st_size
        buf: object = mmap.mmap(-1, size) if size else bytearray()
        got = _read_into(fd, memoryview(buf), 0)  # type: ignore[arg-type]
        if got != size:
            self._corrupt(digest, path, f"short read ({got} of {size} bytes)")
        self._verify(digest, path, buf)
        return buf

    def _chunk_list(self, digest: str, fd: int) -> ChunkList | None:
        """The verified chunk list kept at the end of the file, if the blob is named by one."""
        total = os.fstat(fd).st_size
        if total < CHUNKED_MIN + FOOTER_SIZE:
            return None
        length = list_length(os.pread(fd, FOOTER_SIZE, total - FOOTER_SIZE))
        if length is None or length > LIST_OVERHEAD + (total // CHUNK + 1) * DIGEST_SIZE:
            return None
        chunks = ChunkList.decode(os.pread(fd, length, total - FOOTER_SIZE - length), digest)
        if chunks is None or chunks.size != total - FOOTER_SIZE - length:
            return None  # not a list this name covers: checked as a flat blob, which it cannot pass either
        return chunks

    def _filling(self, digest: str, path: Path, fd: int, chunks: ChunkList, pool: ThreadPoolExecutor) -> Filling:
        """Start reading the chunks on ``pool``, from a descriptor of their own (the file may be unlinked meanwhile)."""
        filling = Filling(digest, chunks)
        own = os.dup(fd)
        left = [chunks.count]
        moved = [False]
        lock = threading.Lock()

        def read_into(view: memoryview, offset: int) -> int:
            return os.preadv(own, [view], offset)

        def fill(index: int) -> None:
            try:
                filling.fill(index, read_into)
            finally:
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                    move = isinstance(filling.error, BlobCorruptError) and not moved[0]
                    moved[0] = moved[0] or move
                if move:
                    self._move_aside(digest, path)  # so the next capture writes it again
                if last:
                    os.close(own)

        if not chunks.count:
            os.close(own)
        for index in range(chunks.count):
            pool.submit(fill, index)
        return filling

    def _settle(self, digest: str, path: Path, filling: Filling) -> None:
        try:
            filling.wait()
        except BlobCorruptError as exc:
            self._corrupt(digest, path, str(exc).split(" is corrupt: ", 1)[-1])

    def _verify(self, digest: str, path: Path, data: object) -> None:
        actual = digest_of(data)  # type: ignore[arg-type]
        if actual != digest:
            self._corrupt(digest, path, f"its content hashes to {actual}")

    def _corrupt(self, digest: str, path: Path, why: str) -> None:
        """Move a corrupt blob aside (so the next put rewrites it) and raise."""
        target = self._move_aside(digest, path)
        moved = f"; moved to {target}" if target else ""
        raise BlobCorruptError(f"blob {digest} at {path} is corrupt: {why}{moved}")

    def _move_aside(self, digest: str, path: Path) -> Path | None:
        with contextlib.suppress(OSError):
            self.modes.make_dirs(self._quarantine)
            target = self._quarantine / f"{digest}.{int(time.time())}"
            os.replace(path, target)
            return target
        return None

    # -- housekeeping ----------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            workers = max(2, min(4, os.cpu_count() or 2))
            self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyrepl3-blobs")
        return self._pool

    def _fills(self) -> ThreadPoolExecutor:
        """Threads for lazy fills, a little nicer than the kernel's own (Linux niceness is per thread):
        what the user waits for first is the first reply, not an array no cell has asked for yet."""
        if self._fill_pool is None:
            self._fill_pool = ThreadPoolExecutor(
                max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="pyrepl3-fill", initializer=_nicer
            )
        return self._fill_pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._fill_pool is not None:  # restored arrays still arriving outlive the store they came from
            self._fill_pool.shutdown(wait=False)
        self._pool = self._fill_pool = None

    def _sweep_temps(self) -> None:
        """Remove temp files left by a crash mid-write (old ones only: another kernel may be writing)."""
        cutoff = time.time() - _STALE_TEMP_SECONDS
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._tmp):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)


def _nicer() -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5))


def _read_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``fd`` at ``offset``; the bytes read (fewer at end of file)."""
    got = 0
    while got < view.nbytes:
        n = os.preadv(fd, [view[got : got + _WRITE_CHUNK]], offset + got)
        if not n:
            break
        got += n
    return got


__all__ = ["HASH_NAME", "BlobCorruptError", "BlobMissingError", "BlobSpaceError", "FileBlobStore", "byte_view", "digest_of"]
