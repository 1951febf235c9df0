"""Garbage collection of the file blob store: the blobs there are, and deleting old ones
without racing a checkpoint that is writing the same content again.

Kept apart from :mod:`kernel.store.embedded.blobs` (writing and reading) as the part
only :mod:`kernel.store.embedded.reclaim` uses; ``FileBlobStore`` takes it as a base.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from kernel.store.base import StoredBlob
from kernel.store.digests import is_digest


class CollectableFiles:
    """What garbage collection asks of a blob directory (``<root>/<aa>/<rest>``, temp files in ``_tmp``)."""

    root: Path
    fsync: bool
    _tmp: Path

    def path(self, digest: str) -> Path:
        raise NotImplementedError

    def stored(self) -> Iterator[StoredBlob]:
        """Every blob under the root (the ``<aa>/`` shards; not temp or quarantined files)."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as shards:
            for shard in shards:
                if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError), os.scandir(shard.path) as entries:
                    for entry in entries:
                        digest = shard.name + entry.name
                        if not is_digest(digest):
                            continue
                        with contextlib.suppress(FileNotFoundError):
                            st = entry.stat(follow_symlinks=False)
                            yield StoredBlob(digest, st.st_size, st.st_mtime)

    def delete(self, digests: Iterable[str], *, written_before: float) -> list[StoredBlob]:
        """Delete blobs untouched since ``written_before``.

        A ``put`` of the same content touches the file (:meth:`_touch`), so one a
        checkpoint in progress just reused is young again. Each blob is first renamed
        into ``tmp/`` (atomic; a ``put`` racing with it then writes the blob afresh),
        then its time is looked at once more: touched in between, it is put back."""
        freed: list[StoredBlob] = []
        for digest in digests:
            final = self.path(digest)
            try:
                if final.stat().st_mtime >= written_before:
                    continue
                trash = self._tmp / f"gc-{digest[:16]}-{uuid.uuid4().hex}"
                os.rename(final, trash)
            except FileNotFoundError:
                continue
            st = trash.stat()
            if st.st_mtime >= written_before:
                os.replace(trash, final)  # the same content, whoever wrote it last
                continue
            os.unlink(trash)
            freed.append(StoredBlob(digest, st.st_size, st.st_mtime))
        if freed and self.fsync:
            fsync_dir(self._tmp)
        return freed


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a rename, a delete) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["CollectableFiles", "fsync_dir"]
