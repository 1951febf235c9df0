"""Chunked blob names, verified fills and what may be unpickled before its buffers arrive (no kernel)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel.checkpoint.checkpointer import Checkpointer
from kernel.checkpoint.lazy import PendingValues, reads_no_buffer
from kernel.checkpoint.pickling import PickleContext
from kernel.store.base import BlobCorruptError
from kernel.store.chunks import CHUNK, ChunkList, Filling, blob_name
from kernel.store.digests import digest_of
from kernel.store.embedded.blobs import FileBlobStore


class Peeks:
    """Reads its data while unpickled: must never be handed a buffer that has not arrived."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.total = float(self.data.sum())


def stream_of(value: object) -> bytes:
    return PickleContext({}, [value]).pickle(value).stream


def test_only_numpys_reconstructor_is_unpickled_over_buffers_not_read_yet() -> None:
    assert reads_no_buffer(stream_of(np.ones(100_000)))
    # strings the pickler memoized earlier ("numpy", "dtype") come back by reference: still understood
    assert reads_no_buffer(stream_of(["numpy", "dtype", {"dtype": np.ones((300, 300), order="F")}]))
    assert not reads_no_buffer(stream_of(pd.DataFrame({"a": np.ones(100_000)})))
    assert not reads_no_buffer(stream_of(Peeks(np.ones(100_000))))
    assert not reads_no_buffer(pickle.dumps(print, protocol=5))
    assert not reads_no_buffer(b"not a pickle")


def test_large_blobs_are_named_by_their_chunk_list(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random(2_000_000)  # 16 MB: 4 chunks
    small = np.arange(1000)
    chunks = ChunkList.of(memoryview(data).cast("B"))
    assert chunks.count == 4 and blob_name(data) == chunks.name != digest_of(memoryview(data).cast("B"))
    assert blob_name(small) == digest_of(memoryview(small).cast("B"))
    assert ChunkList.decode(chunks.encode(), chunks.name) == chunks
    assert ChunkList.decode(chunks.encode(), digest_of(memoryview(data).cast("B"))) is None
    store = FileBlobStore(tmp_path).open()
    name = store.put(data)
    assert name == chunks.name and store.size(name) == data.nbytes and bytes(store.get(name)) == data.tobytes()


def test_a_fill_never_holds_a_byte_that_failed_its_check(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path).open()
    data = np.random.default_rng(2).random(2_000_000)
    name = store.put(data)
    path = store.path(name)
    raw = bytearray(path.read_bytes())
    raw[CHUNK + 7] ^= 0xFF
    path.write_bytes(bytes(raw))
    filling = store.open_buffers([name], lazy=True)[0]
    assert isinstance(filling, Filling)
    with pytest.raises(BlobCorruptError, match="chunk 1"):
        filling.wait()
    assert bytes(filling.buffer[CHUNK : 2 * CHUNK]) == bytes(CHUNK), "the tampered chunk never reached the buffer"
    store.close()


def test_cells_wait_only_for_what_they_may_reach_and_a_failed_value_leaves(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path).open()
    namespace = {"good": np.ones(2_000_000), "bad": np.zeros(2_000_000), "n": 1}
    manifest, _ = Checkpointer(store).capture(namespace, code=None, previous=None)
    path = store.path(manifest.entries["bad"].buffers[0])
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    restored: dict = {}
    report = Checkpointer(store).restore(manifest, restored)
    assert sorted(report.restored) == ["bad", "good", "n"]
    from kernel.checkpoint.lazy import PENDING

    failed = PENDING.settle("print(good.sum())", restored)  # waits for good (bad's failure, if known by then, too)
    assert float(restored["good"].sum()) == 2_000_000
    failed += PENDING.settle(None, restored)
    assert [names for names, _why in failed] == [["bad"]] and "corrupt" in failed[0][1]
    assert "bad" not in restored and restored["n"] == 1
    assert not PENDING
    store.close()


def test_a_pickle_of_a_buffer_still_arriving_waits_for_it() -> None:
    pending = PendingValues()
    chunks = ChunkList.of(memoryview(bytes(CHUNK)))
    filling = Filling("x" * 64, chunks)
    array = np.frombuffer(filling.buffer, dtype=np.uint8)
    pending.add({"a": array}, [filling])
    filling.failed(BlobCorruptError("blob is corrupt: test"))
    with pytest.raises(BlobCorruptError):
        pending.wait_for_buffer(memoryview(array))
