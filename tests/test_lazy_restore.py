"""Issue 12, point 4: large arrays come back at once, their bytes arriving verified in the background.

Real kernels, kill -9, real stores. A restored 24 MB array (6 chunks) equals
the original, is writable and its own (a write reaches neither its twin of
equal content nor the store), survives its blob being deleted or rewritten on
disk after the restore, and a later change is checkpointed and restored. A
tampered chunk, chunk list or file is refused: the value is not in the
namespace when any cell can see it, and no tampered byte is written back into
the store.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import pytest
from harness import KernelFactory, Store, kernel_env

pytestmark = pytest.mark.engines("embedded", "postgres")

CHUNK = 4 << 20
MAKE = (
    "import hashlib\nimport numpy as np\n"
    "big = np.random.default_rng(7).random(3_000_000)\n"
    "twin = big.copy()\n"
    "want = hashlib.sha256(big).hexdigest()\n"
    "small = 42"
)


def blob_files(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file() and p.parent.name not in ("tmp", "corrupt")]


def test_a_restored_array_is_equal_writable_and_its_own(kernels: KernelFactory, home: Path, store: Store) -> None:
    kernel = kernels.start(session="lazy")
    kernel.ok(MAKE)
    kernel.kill9()
    embedded = store.kind == "embedded"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in blob_files(home)} if embedded else {}

    fresh = kernels.start(session="lazy")
    assert fresh.ok("print(small)").stream("stdout") == "42\n"
    check = "print(hashlib.sha256(big).hexdigest() == want, hashlib.sha256(twin).hexdigest() == want, big.flags.writeable)"
    assert fresh.ok(check).stream("stdout") == "True True True\n"
    if embedded:
        saved = {p: p.read_bytes() for p in blob_files(home)}
        for path in saved:  # rewritten in place after the restore: the arrays do not follow the file
            with open(path, "r+b") as f:
                f.write(b"\xff" * CHUNK)
        assert fresh.ok(check).stream("stdout") == "True True True\n"
        for path, data in saved.items():
            path.write_bytes(data)
    run = fresh.ok("big[:10] = -1.0\nprint(float(twin[0]) != -1.0, float(big[3]))")
    assert run.stream("stdout") == "True -1.0\n", "writable, and a write reaches neither the twin of equal content"
    if embedded:
        unchanged = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}
        assert unchanged == before, "a write to a restored array never reaches the store's blobs"
    fresh.kill9()

    again = kernels.start(session="lazy")
    if embedded:  # the fills hold their own descriptors: a blob deleted after the restore began changes nothing
        again.ok("pass")
        for path in blob_files(home):
            path.unlink()
    out = again.ok("print(float(big[3]), float(big[10]) == float(twin[10]), hashlib.sha256(twin).hexdigest() == want)")
    assert out.stream("stdout") == "-1.0 True True\n", "the change was checkpointed and came back after kill -9"


TAMPERS = ("a chunk's bytes", "the chunk list", "the file cut short")


@pytest.mark.embedded_only("edits blob files; the Postgres store reads a blob whole before use (test_engines tampers it)")
@pytest.mark.parametrize("tamper", TAMPERS)
def test_a_tampered_chunk_is_refused_and_never_used(kernels: KernelFactory, home: Path, tamper: str) -> None:
    kernel = kernels.start(session="lazy-tamper")
    kernel.ok(MAKE.replace("twin = big.copy()\n", ""))
    kernel.kill9()
    [blob] = [p for p in blob_files(home) if p.stat().st_size > 3_000_000 * 8]
    data = bytearray(blob.read_bytes())
    pattern = b"TAMPERED" * 512
    if tamper == "a chunk's bytes":
        data[2 * CHUNK + 100 : 2 * CHUNK + 100 + len(pattern)] = pattern
    elif tamper == "the chunk list":
        data[-100:-60] = b"\x00" * 40  # a chunk digest in the list kept after the bytes
    else:
        data[CHUNK : CHUNK + len(pattern)] = pattern
        del data[3 * CHUNK :]
    blob.write_bytes(bytes(data))

    fresh = kernels.start(session="lazy-tamper")
    first = fresh.ok("print(small)")
    assert first.stream("stdout") == "42\n"
    run = fresh.ok("print('big' in dir())")
    assert run.stream("stdout") == "False\n", "a refused value is gone before any cell can see it"
    said = first.stream("stderr") + run.stream("stderr")
    assert "skipped big" in said and "corrupt" in said, said
    assert "NameError" in fresh.execute("big.sum()").content["ename"]
    fresh.ok("small = 43\nglobals()")  # a full capture: every name pickled again
    for path in blob_files(home):
        assert b"TAMPERED" not in path.read_bytes(), f"a tampered byte was written back into the store: {path}"
    fresh.kill9()
    again = kernels.start(session="lazy-tamper")
    assert again.ok("print(small, 'big' in dir())").stream("stdout") == "43 False\n"


@pytest.mark.parametrize("row", ["a data row", "the chunk list row"])
def test_a_tampered_chunk_row_in_postgres_is_refused(kernels: KernelFactory, home: Path, store: Store, row: str) -> None:
    if store.kind != "postgres":
        pytest.skip("edits Postgres rows; the embedded store: test_a_tampered_chunk_is_refused_and_never_used")
    import numpy as np
    import psycopg
    from kernel.store.chunks import blob_name

    seed = int.from_bytes(hashlib.sha256(row.encode() + str(home).encode()).digest()[:4], "little")  # content no other test has
    kernel = kernels.start(session="lazy-pg")
    kernel.ok(MAKE.replace("default_rng(7)", f"default_rng({seed})").replace("twin = big.copy()\n", ""))
    kernel.kill9()
    digest = blob_name(np.random.default_rng(seed).random(3_000_000))
    with psycopg.connect(store.dsn, autocommit=True) as db:
        (rows,) = db.execute("SELECT chunks FROM pyrepl3.blobs WHERE digest = %s", (digest,)).fetchone()
        seq = 1 if row == "a data row" else rows
        changed = db.execute(
            "UPDATE pyrepl3.blob_chunks SET data = overlay(data PLACING '\\xffffffffffffffffffff'::bytea FROM 101 FOR 10) "
            "WHERE digest = %s AND seq = %s",
            (digest, seq),
        ).rowcount
    assert changed == 1
    fresh = kernels.start(session="lazy-pg")
    run = fresh.ok("print(small, 'big' in dir())")
    assert run.stream("stdout") == "42 False\n"
    assert "skipped big:" in run.stream("stderr") and "corrupt" in run.stream("stderr"), run.stream("stderr")


@pytest.mark.embedded_only("edits blob files; Postgres: test_a_tampered_chunk_row_in_postgres_is_refused")
def test_random_tampering_of_a_large_blob_is_always_refused(kernels: KernelFactory, home: Path, tmp_path: Path,
                                                          fault_trials: int, fault_rng: random.Random) -> None:
    """Random trials: one byte flipped anywhere in a 40 MB blob (10 chunks), its chunk list or footer, or the
    file cut; every fourth trial an untampered control. Each trial restores a copy of one store after kill -9."""
    kernel = kernels.start(session="lazy-trials")
    kernel.ok("import numpy as np\nbig = np.arange(5_000_000, dtype=np.float64)\nsmall = 42")
    kernel.kill9()
    [blob] = [p for p in blob_files(home) if p.stat().st_size > 5_000_000 * 8]
    relative = blob.relative_to(home)
    original = blob.read_bytes()
    trials = controls = refused = used = 0
    for trial in range(fault_trials):
        copy = tmp_path / f"trial-{trial}"
        shutil.copytree(home, copy, ignore=shutil.ignore_patterns("locks"))
        control = trial % 4 == 3
        data = bytearray(original)
        where = "control"
        if not control:
            kind = fault_rng.choice(["data", "data", "list", "cut"])
            if kind == "cut":
                del data[fault_rng.randrange(len(data) // 2, len(data)) :]
                where = f"cut at {len(data)}"
            else:
                offset = fault_rng.randrange(0, 5_000_000 * 8) if kind == "data" else fault_rng.randrange(5_000_000 * 8, len(data))
                data[offset] ^= 1 << fault_rng.randrange(8)
                where = f"bit flipped at {offset} ({kind})"
        (copy / relative).write_bytes(bytes(data))
        fresh = kernels.start(session="lazy-trials", home=copy, env=kernel_env(copy, "lazy-trials"))
        run = fresh.ok("print(small, 'big' in dir(), 'big' in dir() and float(big.sum()) == float(np.arange(5_000_000).sum()))")
        trials += 1
        if control:
            controls += 1
            assert run.stream("stdout") == "42 True True\n", (where, run.stream("stdout"), run.stream("stderr"))
        elif run.stream("stdout") != "42 False False\n":
            used += 1
            print(f"trial {trial}: {where}: the tampered value was there: {run.stream('stdout')!r}")
        else:
            assert "skipped big" in run.stream("stderr") and "corrupt" in run.stream("stderr"), (where, run.stream("stderr"))
            refused += 1
        fresh.kill9()
        shutil.rmtree(copy, ignore_errors=True)
    print(f"\n[embedded] tampered large-blob trials: {trials} (untampered controls {controls}), refused: {refused}, "
          f"tampered values used: {used}")
    assert used == 0 and refused == trials - controls and controls >= 1
