"""Storage reclaimed: retention (with delta bases), garbage collection on real kernels and stores.

Unit tests for the policy (synthetic records carrying ``base``); then real kernels on both
engines: ``pyrepl3 gc`` deletes the checkpoints retention lets go and the blobs nothing
names, a dry run deletes nothing, and afterwards a kill -9 still restores the latest,
``%durable restore N`` of a kept or pinned one works and of a reclaimed one says so.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import harness
from harness import PYREPL3_CLI, SCRUBBED, TIMEOUT, KernelFactory, kernel_env, wait_for

from kernel.checkpoint.retention import CheckpointRef, Retention, closure, digests_in, live_digests, ref_of
from kernel.core.ids import checkpoint_id, session_key

DAY = 86400.0
NOW = 1_000_000_000.0


def _record(session: str, seq: int, *, base: int | None = None, age: float = 1.0, count: int | None = None, where: str = "value") -> dict[str, Any]:
    value: dict[str, Any] = {"manifest": {"entries": {}}, "execution_count": count if count is not None else seq}
    if base is not None:
        (value if where == "value" else value["manifest"])["base"] = base
    return {"id": checkpoint_id(session_key(session), seq), "value": value, "created_at": int((NOW - age) * 1000)}


def test_records_carrying_base_keep_their_chain() -> None:
    """1 full, 2-4 deltas on 1, 5 full, 6-10 deltas on 5: keeping the newest two keeps 5..10."""
    recs = [_record("s", 1)] + [_record("s", n, base=1) for n in (2, 3, 4)] + [_record("s", 5, base=5)]
    recs += [_record("s", n, base=5, where="value" if n % 2 else "manifest") for n in range(6, 11)]
    refs = [ref_of(r, "s") for r in recs]
    assert [r.base for r in refs] == [1, 1, 1, 1, 5, 5, 5, 5, 5, 5]
    policy = Retention(keep_last=2, keep_seconds=0)
    assert policy.chosen(refs, [], NOW) == {9, 10}
    assert policy.retained(refs, [], NOW) == {5, 6, 7, 8, 9, 10}
    assert policy.retained(refs, [3], NOW) == {1, 2, 3, 5, 6, 7, 8, 9, 10}, "a pinned delta keeps its base and what lies between"
    assert policy.retained(refs, [42], NOW) == {5, 6, 7, 8, 9, 10}, "a pin of a record that is gone keeps nothing"


def test_closure_is_transitive_and_tolerates_gaps() -> None:
    """A record in a chain may itself build on an older base; records already gone are skipped."""
    refs = [CheckpointRef(f"c{n}", n, NOW, n, base) for n, base in [(1, 1), (3, 1), (4, 3), (6, 4), (7, 7)]]
    assert closure(refs, {6}) == {1, 3, 4, 6}
    assert closure(refs, {7}) == {7}


def test_records_without_base_are_full() -> None:
    """Today's records (no ``base``), and a base that cannot be one, count as full checkpoints."""
    recs = [_record("s", 1), _record("s", 2, base=2), _record("s", 3, base=9), _record("s", 4, base=-1)]
    assert [ref_of(r, "s").base for r in recs] == [1, 2, 3, 4]
    assert Retention(keep_last=1, keep_seconds=0).retained([ref_of(r, "s") for r in recs], [], NOW) == {4}


def test_retention_by_age_count_and_pin() -> None:
    recs = [_record("s", n, age=(30 - n) * 3600) for n in range(1, 31)]  # one an hour, the newest now
    refs = [ref_of(r, "s") for r in recs]
    kept = Retention(keep_last=3, keep_seconds=DAY).retained(refs, [2], NOW)
    assert kept == {2} | set(range(7, 31)), "younger than 24 h (7..30), the newest 3, and the pin"
    assert Retention(keep_last=0, keep_seconds=0).retained(refs, [], NOW) == {30}, "the newest always stays"


def test_retention_says_until_when_it_keeps_everything_it_keeps() -> None:
    """holds_until: the first moment a kept, unpinned checkpoint gets too old; ``now`` when one is
    kept only as one of the newest (the next checkpoint pushes it out); infinity when all are pinned."""
    day = Retention(keep_last=3, keep_seconds=DAY)
    young = [ref_of(_record("s", n, age=(10 - n) * 3600), "s") for n in range(1, 11)]  # 9 h .. 0 h old
    assert day.holds_until(young, [], NOW) == NOW - 9 * 3600 + DAY, "the oldest leaves the day first"
    assert day.holds_until(young, [1], NOW) == NOW - 8 * 3600 + DAY, "a pinned one never leaves"
    old = [ref_of(_record("s", n, age=2 * DAY), "s") for n in (1, 2)] + [young[2]]
    assert day.holds_until(old, [], NOW) == NOW, "1 and 2 (two days old) are kept only as two of the newest 3"
    assert day.holds_until(old[:2], [1, 2], NOW) == float("inf")


def test_a_kernels_collections_are_skipped_while_nothing_can_be_freed() -> None:
    """Schedule: due every ``every``-th checkpoint; after a collection, not before the
    report's ``holds_until``, and never later than one grace period after it started."""
    from kernel.checkpoint.reclaim import GcReport, SessionReport
    from kernel.durable.reclaiming import Schedule

    schedule = Schedule(every=2, grace=3600)
    assert [schedule.stored(NOW) for _ in range(4)] == [None, "collect", None, "collect"]
    schedule.collected(GcReport(False, "p", [SessionReport("s", holds_until=NOW + 600)]), NOW)
    assert [schedule.stored(NOW + 599) for _ in range(2)] == [None, "compact"], "nothing leaves retention before +600 s"
    assert [schedule.stored(NOW + 600) for _ in range(2)] == [None, "collect"]
    schedule.collected(GcReport(False, "p", [SessionReport("s")]), NOW)  # every checkpoint stays for ever
    assert [schedule.stored(NOW + 3599) for _ in range(2)] == [None, "compact"]
    assert [schedule.stored(NOW + 3600) for _ in range(2)] == [None, "collect"], "unnamed blobs: one collection per grace"
    schedule.collected(GcReport(False, "p", [SessionReport("s", holds_until=NOW)]), NOW)
    assert [schedule.stored(NOW) for _ in range(2)] == [None, "collect"], "the next checkpoint may push one out"
    schedule.collected(GcReport(False, "p", [SessionReport("s", holds_until=NOW + 600)]), NOW)
    schedule.reset()
    assert [schedule.stored(NOW) for _ in range(2)] == [None, "collect"], "a pin removed: collect when next due"
    assert not any(Schedule(every=0, grace=1).stored(NOW) for _ in range(5)), "PYREPL3_GC_EVERY=0: never"
    schedule.stop()
    assert not any(schedule.stored(NOW + 7200) for _ in range(4)), "stopped (an engine without collection): never"


def test_digests_anywhere_in_a_record_are_found() -> None:
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    value = {"manifest": {"entries": {"x": {"blob": a, "buffers": [b]}}, "id": "f" * 32}, "outcome": c, "size": 3}
    assert set(digests_in(value)) == {a, b, c}


def test_a_kept_chain_keeps_only_the_values_its_chosen_checkpoints_see() -> None:
    """A full (a, b) and deltas rewriting ``a`` twice, then removing ``b``: keeping only the newest
    keeps its effective manifest (the last ``a``) and every link's outcome, not the replaced values."""
    d = {k: h * 64 for k, h in zip("abcdefgh", "abcdef01")}  # blob names are hex
    entry = lambda blob: {"blob": blob, "buffers": []}  # noqa: E731
    values = {
        1: {"manifest": {"entries": {"a": entry(d["a"]), "b": entry(d["b"])}}, "base": 1, "outcome": d["f"]},
        2: {"manifest": {"entries": {"a": entry(d["c"])}}, "base": 1, "outcome": d["g"]},
        3: {"manifest": {"entries": {"a": entry(d["d"])}, "removed": ["b"]}, "base": 1, "outcome": d["h"]},
    }
    refs = [CheckpointRef(f"c{n}", n, NOW, n, 1) for n in values]
    kept = closure(refs, {3})
    assert kept == {1, 2, 3}
    assert live_digests(values, refs, {3}, kept) == {d["d"], d["f"], d["g"], d["h"]}
    assert live_digests(values, refs, {2, 3}, kept) == {d["b"], d["c"], d["d"], d["f"], d["g"], d["h"]}, "2 sees b and its a"


def test_a_put_of_existing_content_makes_a_blob_young_again(tmp_path: Path) -> None:
    """A checkpoint in progress reuses a blob before its record exists: the put refreshes the
    blob's time, so collection (grace measured from that time) leaves it alone."""
    from kernel.store.embedded.blobs import FileBlobStore

    blobs = FileBlobStore(tmp_path / "blobs").open()
    old, reused = blobs.put(b"old" * 1000), blobs.put(b"reused" * 1000)
    for digest in (old, reused):
        os.utime(blobs.path(digest), (NOW, NOW))
    assert blobs.put(b"reused" * 1000) == reused  # found again: no write, but young
    cutoff = NOW + 3600
    assert {b.digest for b in blobs.stored()} == {old, reused}
    assert [b.digest for b in blobs.delete([old, reused], written_before=cutoff)] == [old]
    assert not blobs.has(old) and blobs.has(reused)
    assert blobs.get(reused) == b"reused" * 1000
    assert blobs.put(b"old" * 1000) == old and blobs.get(old) == b"old" * 1000, "collected content is written again"


# -- real kernels, real stores ---------------------------------------------------------

#: Retention for these tests: the newest 2 (plus pins), no age window; no automatic collection.
POLICY = {"PYREPL3_KEEP_LAST": "2", "PYREPL3_KEEP_HOURS": "0", "PYREPL3_GC_EVERY": "0"}


def gc_cli(home: Path, *args: str, grace: str = "0", **extra: str) -> subprocess.CompletedProcess[str]:
    """``pyrepl3 gc ARGS`` on the engine under test, with :data:`POLICY` (and a grace period of ``grace``)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(POLICY, PYREPL3_GC_GRACE=grace, **extra)
    args = tuple(harness.CURRENT.session(a) if i and args[i - 1] == "--session" else a for i, a in enumerate(args))
    proc = subprocess.run(
        [str(PYREPL3_CLI), "--home", str(home), *harness.CURRENT.cli_args(), "gc", *args],
        capture_output=True, text=True, env=env, timeout=TIMEOUT, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"pyrepl3 gc {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def blob_count(home: Path) -> int:
    """Blobs the engine under test holds (the whole store: on Postgres, every test's)."""
    if harness.CURRENT.shared:
        import psycopg

        with psycopg.connect(harness.CURRENT.dsn) as conn:
            return conn.execute("SELECT count(*) FROM pyrepl3.blobs").fetchone()[0]  # type: ignore[index]
    root = home / "blobs"
    return sum(1 for shard in root.iterdir() if len(shard.name) == 2 for _ in shard.iterdir())


def checkpoint_counts(kernel: Any) -> list[int]:
    """The execution counts ``%durable checkpoints`` lists (this cell itself is not checkpointed yet)."""
    [shown] = kernel.ok("%durable checkpoints").of_type("display_data")
    out = shown["content"]["data"]["text/plain"]
    return [int(line.split()[0]) for line in out.splitlines()[1:] if line.split() and line.split()[0].isdigit()]


#: Content unique to each run: blobs are shared by every session of a store (a shared database
#: holds earlier runs' sessions, whose records keep the same content alive).
TAG = os.urandom(8).hex()
BIG = 'a = b"%d" * 300_000 + b"' + TAG + '"'


@pytest.mark.engines("embedded", "postgres")
def test_gc_reclaims_what_retention_lets_go(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start(session="gc", env=kernel_env(home, "gc", **POLICY))
    kernel.ok(BIG % 1)                                              # execution 1
    assert "pinned" in kernel.ok("%durable keep 1").stream("stdout")  # 2
    for n in (3, 4, 5):
        kernel.ok(BIG % n)                                          # 3, 4, 5
    assert checkpoint_counts(kernel) == [1, 2, 3, 4, 5]           # 6 lists 1..5
    blobs_before = blob_count(home)

    dry = json.loads(gc_cli(home, "--session", "gc", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["checkpoints_deleted"] >= 2 and dry["blobs"]["freed"] >= 1, dry
    assert blob_count(home) == blobs_before, "a dry run deletes no blob"
    assert checkpoint_counts(kernel) == [1, 2, 3, 4, 5, 6], "a dry run deletes no checkpoint"

    done = json.loads(gc_cli(home, "--session", "gc", "--json").stdout)
    [mine] = done["sessions"]
    # kept: the newest 2 (after executions 6 and 7), and the pinned one after execution 1
    assert mine["kept"] == 3 and mine["pinned"] == 1 and sorted(mine["deleted_counts"]) == [2, 3, 4, 5], done
    assert done["blobs"]["freed"] >= 2 and done["blobs"]["freed_bytes"] >= 2 * 300_000, "a = 3 and a = 4 are gone (a = 5 is live)"
    assert blob_count(home) < blobs_before
    if not harness.CURRENT.shared:  # the collection folded SQLite's WAL into the store file (the kernel is idle)
        assert (home / "store.sqlite3-wal").stat().st_size == 0
    assert "pyrepl3 gc: gc freed" in gc_cli(home, "--session", "gc").stdout  # the table, for people

    kernel.kill9()
    again = kernels.start(session="gc", env=kernel_env(home, "gc", **POLICY))
    assert again.ok("print(a[:1], len(a))").stream("stdout") == "b'5' 300016\n", "the latest is restored after gc and kill -9"
    assert "is back" in again.ok("%durable restore 1\nprint(a[:1])").stream("stdout")
    assert again.ok("print(a[:1])").stream("stdout") == "b'1'\n", "the pinned checkpoint is whole"
    gone = again.ok("%durable restore 3").stream("stdout")
    assert "was reclaimed by garbage collection" in gone and "execution 3" in gone, gone
    assert "execution 1" in again.ok("%durable keep").stream("stdout")
    assert "unpinned" in again.ok("%durable keep --unpin 1").stream("stdout")
    assert "pinned: (nothing)" in again.ok("%durable keep").stream("stdout")


@pytest.mark.engines("embedded", "postgres")
def test_a_kernel_collects_by_itself_and_never_takes_a_young_blob(kernels: KernelFactory, home: Path) -> None:
    """PYREPL3_GC_EVERY=3: the kernel collects in the background; with the default grace nothing
    recent is freed, so every checkpoint in progress keeps its blobs."""
    env = kernel_env(home, "auto", **{**POLICY, "PYREPL3_GC_EVERY": "3"})
    kernel = kernels.start(session="auto", env=env)
    for n in range(1, 8):
        kernel.ok(BIG % n)
    # Checkpoints after 1..7; collections after the 3rd and 6th: the newest 2 stay, then more come.
    wait_for(lambda: len(checkpoint_counts(kernel)) <= 5, what="the background collection")
    blobs = blob_count(home)
    kernel.kill9()
    again = kernels.start(session="auto", env=env)
    assert again.ok("print(a[:1])").stream("stdout") == "b'7'\n"
    assert blob_count(home) >= blobs - 1, "young blobs stay (PYREPL3_GC_GRACE)"


@pytest.mark.engines("embedded", "postgres")
def test_a_large_output_is_kept_once_and_outlives_gc(kernels: KernelFactory, home: Path) -> None:
    """An output over PYREPL3_OUTPUT_BLOB_BYTES is one blob named by digest: the execution, its
    outcome blob, a ``%durable outputs`` replay in a later cell and a re-sent msg_id all use it,
    and garbage collection keeps it (executions are never deleted)."""
    env = kernel_env(home, "out", **POLICY, PYREPL3_OUTPUT_BLOB_BYTES="100KB")
    kernel = kernels.start(session="out", env=env)
    text = "x" * 300_000 + TAG
    first = kernel.ok(f"print({text!r})")
    assert first.stream("stdout") == text + "\n"
    assert kernel.ok("%durable outputs 1").stream("stdout") == text + "\n", "shown again, whole"
    rows = {r["execution_count"]: r for r in harness.executions(home, "out").values()}
    stored = [harness.show(home, rows[n]["id"])["value"]["outputs"][0] for n in (1, 2)]
    assert stored[0]["text"] == "" and stored[0]["pyrepl3_blobs"] == stored[1]["pyrepl3_blobs"], stored
    gc_cli(home, "--session", "out")
    kernel.kill9()
    again = kernels.start(session="out", env=env)
    replayed = again.execute(f"print({text!r})", msg_id=first.msg_id)
    assert replayed.stream("stdout") == text + "\n", "a re-sent msg_id replays the whole output after gc"
    assert again.ok("%durable outputs 1").stream("stdout") == text + "\n"


def _effective_live(values, refs, chosen):
    """The definition: for each chosen checkpoint, every blob of its effective manifest."""
    by_seq = {r.seq: r for r in refs}
    live = set()
    for seq in chosen:
        entries = {}
        for s in sorted(x for x in by_seq if by_seq[seq].base <= x <= seq):
            manifest = values[s]["manifest"]
            for name in [*manifest.get("removed", ()), *manifest.get("skipped", {})]:
                entries.pop(name, None)
            entries.update(manifest.get("entries", {}))
        live.update(digests_in(entries))
    return live


def test_live_digests_of_chains_agree_with_their_definition() -> None:
    import hashlib
    import random

    rng = random.Random(1234)
    for trial in range(40):
        values, refs, base = {}, [], 0
        for seq in range(rng.randint(1, 60)):
            if seq == 0 or rng.random() < 0.1:
                base = seq
            names = [f"n{rng.randint(0, 8)}" for _ in range(rng.randint(0, 3))]
            entries = {n: {"blob": hashlib.sha256(f"{trial}-{seq}-{n}".encode()).hexdigest()} for n in names}
            removed = [f"n{rng.randint(0, 8)}" for _ in range(rng.randint(0, 2))]
            removed = [n for n in removed if n not in entries]
            values[seq] = {"manifest": {"entries": entries, "removed": removed, "base": base}}
            refs.append(CheckpointRef(id=str(seq), seq=seq, created_at=0, execution_count=seq, base=base))
        chosen = {r.seq for r in refs if rng.random() < 0.4} or {refs[-1].seq}
        kept = closure(refs, chosen)
        inside = live_digests({s: v for s, v in values.items() if s in kept}, refs, chosen, kept)
        assert inside == _effective_live(values, refs, chosen), f"trial {trial}"
