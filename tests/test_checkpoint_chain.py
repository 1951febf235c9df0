"""Delta manifests (kernel.checkpoint.chain, history, tracking): real blob files and signatures, the
records kept in a list the way a catalog returns them. No mocks of the checkpointer, no timing asserts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from kernel.checkpoint.chain import FULL_EVERY
from kernel.checkpoint.checkpointer import Checkpointer
from kernel.checkpoint.history import RECENT, NamespaceCheckpoints
from kernel.checkpoint.signing import SignatureError, Signer
from kernel.checkpoint.tracking import Bindings, View
from kernel.checkpoint.manifest import Entry
from kernel.store.embedded.blobs import FileBlobStore

SESSION = "chain"
REPO = Path(__file__).resolve().parents[1]


class Records:
    """A session's stored checkpoint records, as ``Catalog.checkpoints`` returns them; counts what is read."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.read = 0
        self.clock = 0

    def __call__(self, limit: int | None = None) -> list[dict[str, Any]]:
        ids = sorted(self.rows)
        if limit is not None:
            ids = ids[-limit:] if limit > 0 else []
        self.read += len(ids)
        return [json.loads(json.dumps(self.rows[i])) for i in ids]  # what the engine stores: JSON

    def store(self, promise: Any) -> None:
        self.clock += 100_000  # ms, the engine's clock: a cell every 100 s
        self.rows[promise.id] = {"id": promise.id, "state": "resolved", "value": promise.value, "created_at": self.clock}

    def ids(self) -> list[str]:
        return sorted(self.rows)

    def value(self, index: int) -> dict[str, Any]:
        return self.rows[self.ids()[index]]["value"]


class Session:
    """A notebook whose cells are checkpointed and stored as the kernel does it."""

    def __init__(self, root: Path, records: Records) -> None:
        self.root, self.records = root, records
        self.history = self._history()
        self.ns: dict = {"__name__": "__main__"}
        self.count = 0
        self.snapshots: dict[int, dict[str, Any]] = {}

    def _history(self) -> NamespaceCheckpoints:
        cp = Checkpointer(FileBlobStore(self.root / "blobs").open())
        return NamespaceCheckpoints(cp, Signer(b"key"), SESSION, self.records)

    def run(self, code: str) -> None:
        code = textwrap.dedent(code)
        exec(compile(code, "<cell>", "exec"), self.ns)
        self.count += 1
        promise, _report = self.history.capture(
            self.ns, code=code, execution_count=self.count, msg_id=f"m{self.count}", outcome=f"outcome-{self.count}"
        )
        self.records.store(promise)
        self.snapshots[self.count] = copy.deepcopy(user(self.ns))

    def fresh(self) -> tuple[NamespaceCheckpoints, dict]:
        return self._history(), {"__name__": "__main__"}


def user(ns: dict) -> dict[str, Any]:
    """The names to compare: not the locks (never saved), not modules (not copyable)."""
    return {k: v for k, v in ns.items() if not k.startswith("_") and k != "lk" and not isinstance(v, types.ModuleType)}


def bases(records: Records) -> list[tuple[int, int]]:
    return [(i + 1, records.value(i)["base"]) for i in range(len(records.rows))]


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(tmp_path, Records())


def test_a_cell_adding_one_name_stores_one_entry(session: Session) -> None:
    session.run("a = 1\nb = [1, 2]")
    session.run("c = 3")
    session.run("b.append(3)")
    session.run("del a")
    session.run("import threading\nlk = threading.Lock()")
    full, *deltas = [session.records.value(i) for i in range(5)]
    assert full["base"] == 1 and sorted(full["manifest"]["entries"]) == ["a", "b"]
    assert [d["base"] for d in deltas] == [1, 1, 1, 1]
    assert [sorted(d["manifest"]["entries"]) for d in deltas] == [["c"], ["b"], [], ["threading"]]
    assert deltas[2]["manifest"]["removed"] == ["a"] and list(deltas[3]["manifest"]["skipped"]) == ["lk"]
    assert all("state" not in d["manifest"] for d in deltas), "an unchanged session state is not repeated"
    assert [d["parent"] for d in deltas] == [session.records.value(i)["manifest"]["id"] for i in range(4)]


def test_restore_through_a_chain_and_time_travel(session: Session) -> None:
    session.run("import threading\nxs = []\nn = 0")
    for i in range(2 * FULL_EVERY + 20):
        session.run(f"xs.append({i})\nn += 1\nv{i % 7} = {i}" + ("\nlk = threading.Lock()" if i % 11 == 0 else "\nlk = None"))
        if i % 13 == 0:
            session.run(f"del v{i % 7}")
    full = [seq for seq, base in bases(session.records) if seq == base]
    assert len(full) >= 3 and all(b - a <= FULL_EVERY + 1 for a, b in zip(full, full[1:])), full
    assert full[0] == 1, "the first capture of a process is full"

    history, ns = session.fresh()
    session.records.read = 0
    restored, report = history.restore_latest(ns)
    assert user(ns) == session.snapshots[session.count] and not report.refused
    assert session.records.read <= 2 * RECENT + FULL_EVERY + 1, "a start reads the newest records and one chain, not all"
    assert ("lk" in restored.skipped) == (session.ns["lk"] is not None), "the chain's skipped names, not the last delta's"

    for count in (3, FULL_EVERY + 5, session.count - 1):
        back, ns = session.fresh()
        back.restore_execution(count, ns, clear=True)
        assert user(ns) == session.snapshots[count], count


def test_a_restored_session_continues_its_chain(session: Session) -> None:
    for i in range(5):
        session.run(f"x{i} = {i}")
    history, ns = session.fresh()
    history.restore_latest(ns)
    exec("y = 1", ns)
    promise, _ = history.capture(ns, code="y = 1", execution_count=6, msg_id="m6")
    session.records.store(promise)
    assert promise.value["base"] == 1 and list(promise.value["manifest"]["entries"]) == ["y"]
    again, ns2 = session.fresh()
    again.restore_latest(ns2)
    assert user(ns2) == {**{f"x{i}": i for i in range(5)}, "y": 1}


def test_time_travel_then_a_full_checkpoint(session: Session) -> None:
    for i in range(4):
        session.run(f"x = {i}")
    session.history.restore_execution(2, session.ns, clear=True)
    session.run("y = 2")
    assert session.records.value(-1)["base"] == 5, "no delta builds on a checkpoint other than the newest"


def test_an_unstored_checkpoint_is_followed_by_a_full_one(session: Session) -> None:
    session.run("a = 1")
    exec("b = 2", session.ns)
    lost, _ = session.history.capture(session.ns, code="b = 2", execution_count=2, msg_id="m2")
    session.history.not_stored(lost.id)
    session.run("c = 3")
    assert session.records.value(-1)["base"] == 3
    history, ns = session.fresh()
    history.restore_latest(ns)
    assert user(ns) == {"a": 1, "b": 2, "c": 3}


TAMPER = ("delta edited", "delta copied to a higher seq", "deltas swapped", "record of the chain deleted", "base edited", "full edited")


@pytest.mark.parametrize("tamper", TAMPER)
def test_a_tampered_chain_is_refused(session: Session, tamper: str) -> None:
    for i in range(6):
        session.run(f"x{i} = {i}")  # seq 1 full, 2..6 deltas
    rows, ids = session.records.rows, session.records.ids()
    if tamper == "delta edited":
        rows[ids[3]]["value"]["manifest"]["entries"]["x3"]["blob"] = rows[ids[0]]["value"]["manifest"]["entries"]["x0"]["blob"]
        expected = 3  # the newest checkpoint whose whole chain verifies
    elif tamper == "delta copied to a higher seq":
        rows[ids[-1][:-10] + f"{7:010d}"] = {**copy.deepcopy(rows[ids[1]]), "id": ids[-1][:-10] + f"{7:010d}"}
        expected = 6
    elif tamper == "deltas swapped":
        rows[ids[2]]["value"], rows[ids[3]]["value"] = rows[ids[3]]["value"], rows[ids[2]]["value"]
        expected = 2
    elif tamper == "record of the chain deleted":
        del rows[ids[2]]
        expected = 2
    elif tamper == "base edited":
        rows[ids[-1]]["value"]["base"] = 2
        expected = 5
    else:
        rows[ids[0]]["value"]["manifest"]["entries"]["x0"]["size"] += 1
        expected = None  # every checkpoint builds on the full one
    history, ns = session.fresh()
    if expected is None:
        with pytest.raises(SignatureError):
            history.restore_latest(ns)
        assert user(ns) == {}
        return
    restored, report = history.restore_latest(ns)
    assert restored.execution_count == expected and user(ns) == session.snapshots[expected], (tamper, user(ns))
    assert report.refused and all("refusing" in why for why in report.refused.values()), report.refused


def test_finished_executions_are_found_without_reading_the_whole_history(session: Session) -> None:
    for i in range(300):
        session.run(f"x = {i}")
    made = {"exec:m295": 295 * 100_000 - 500, "exec:lost": 299 * 100_000 + 500}  # the executions' promises, by the same clock
    history = NamespaceCheckpoints(session.history.checkpointer, Signer(b"key"), SESSION, session.records,
                                   lookup=lambda pid: {"id": pid, "created_at": made[pid]})  # fmt: skip
    session.records.read = 0
    assert history.finished({"m295", "lost"}) == {"m295": "outcome-295"}
    assert session.records.read < 60, "stops at checkpoints made before the oldest execution"
    session.records.read = 0
    unbounded = NamespaceCheckpoints(session.history.checkpointer, Signer(b"key"), SESSION, session.records)
    assert unbounded.finished({"m3", "lost"}) == {"m3": "outcome-3"}


def test_bindings_see_only_what_changed() -> None:
    ns: dict = {f"v{i}": i for i in range(1000)}
    then = Bindings(ns)
    ns["v3"] = object()
    ns["new"] = 1
    del ns["v7"]
    moved, gone = then.since(ns)
    assert sorted(moved) == ["new", "v3"] and gone == ["v7"]
    assert Bindings(ns).since(ns) == ([], [])


def test_bindings_do_not_walk_ipythons_history_names() -> None:
    """A trivial cell adds ``_iN`` / ``_N``: found as the names after the last one, without
    comparing the thousands of older ones; a count proves nothing else came or went."""
    ns: dict = {"In": [], "_": None, "_i": "", **{f"_i{n}": f"cell {n}" for n in range(1, 5001)}, **{f"_{n}": n for n in range(1, 1001)}}
    ns["x"] = 1
    then = Bindings(ns)
    compared = []
    sure_way = then._compared
    then._compared = lambda namespace: compared.append(1) or sure_way(namespace)  # type: ignore[method-assign]
    ns["_i5001"], ns["_5001"], ns["_"], ns["_i"] = "1+1", 2, 2, "1+1"
    assert then.since(ns, {"x"}) == (["_", "_i", "_i5001", "_5001"], []) and not compared, "x, the newest name, is mentioned: _1000 marks the start"
    then.move_on(ns, ["_", "_i", "_i5001", "_5001"], [])
    ns["_i3"] = "rebound"  # a history name rebound: seen where the cell names it
    assert then.since(ns, set()) == ([], []) and then.since(ns, {"_i3"}) == (["_i3"], []) and not compared
    del ns["_7"]  # the output cache flushed: unwalked names gone -> every name compared
    assert then.since(ns, set()) == (["_i3"], ["_7"]) and compared


def test_bindings_answer_as_a_full_comparison_would() -> None:
    """Random cells (names added, rebound, deleted, deleted and bound again, history names added
    and flushed): the short way reports what comparing every name reports, except a history name
    rebound by a cell that does not name it (never the shell's doing)."""
    import random

    rng = random.Random(12)
    ns: dict = {"_": None, "_i": "", "_ii": ""}
    then, known, compared = Bindings(ns), dict(ns), []
    sure_way = then._compared
    then._compared = lambda namespace: compared.append(1) or sure_way(namespace)  # type: ignore[method-assign]
    for cell in range(1, 3000):
        mentioned: set[str] = set()
        users = [n for n in ns if n.startswith("v")]
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            op = rng.random()
            if op < 0.3 or not users:
                name = f"v{rng.randrange(200)}"
                ns[name] = object()
                mentioned.add(name)
            elif op < 0.5:
                ns[rng.choice(users)] = object()
            elif op < 0.65:
                ns.pop(rng.choice(users), None)
            elif op < 0.8:
                name = rng.choice(users)
                if name in ns:
                    value = ns.pop(name)
                    ns[f"v{rng.randrange(200, 300)}"] = 1
                    ns[name] = value if rng.random() < 0.5 else object()
            elif op < 0.9 and cell > 3:
                name = f"_i{rng.randrange(1, cell - 1)}"
                if name in ns:
                    ns[name] = object()
                    if rng.random() < 0.5:
                        mentioned.add(name)
            else:
                name = next(reversed(ns))
                ns.pop(name)
                if rng.random() < 0.5:
                    ns[name] = object()
        ns[f"_i{cell}"], ns["_i"] = f"cell {cell}", f"cell {cell}"
        if rng.random() < 0.7:
            ns[f"_{cell}"] = ns["_"] = object()
        if cell % 500 == 0:
            for n in [n for n in ns if n[1:].isdigit()]:
                del ns[n]
        sure = {n for n in ns if known.get(n, ns) is not ns[n]}
        missable = {n for n in sure if n in known and n.startswith("_i") and n[2:].isdigit() and n not in mentioned}
        moved, gone = then.since(ns, mentioned)
        readded = {n for n in moved if n in known and known[n] is ns.get(n)}
        assert sure - missable <= set(moved) <= sure | readded, cell
        assert sorted(gone) == sorted(n for n in known if n not in ns), cell
        assert len(moved) == len(set(moved))
        then.move_on(ns, moved, gone)
        for n in gone:
            known.pop(n)
        known.update((n, ns[n]) for n in moved)
    assert 0 < len(compared) < 3000 * 0.2, "most cells take the short way; the flushes and a few others do not"


def test_the_view_counts_a_shared_blob_once() -> None:
    def entry(blob: str, size: int) -> Entry:
        return Entry.model_construct(kind="pickle", type="list", size=size, blob=blob, blob_size=size, buffers=[],
                                     buffer_sizes=[], group=[], module=None, submodules=[], pickled_at=0.0)  # fmt: skip

    view = View()
    assert view.set("a", entry("b1", 10), None) == (True, False)
    view.set("b", entry("b1", 10), None)
    view.set("c", entry("b2", 5), None)
    assert view.total == 15
    view.set("a", None, None)
    assert view.total == 15 and "a" not in view.entries
    assert view.set("b", None, "excluded") == (False, True)
    assert view.total == 5 and view.skipped == {"b": "excluded"}
    entries = {name: entry(f"b{k % 3}", 10 + k % 3) for k, name in enumerate("pqrstu")}
    whole, one_by_one = View.of(entries, {"p": "old reason", "z": "excluded"}), View(skipped={"p": "old reason", "z": "excluded"})
    for name, e in entries.items():
        one_by_one.set(name, e, None)
    assert (whole.entries, whole.skipped, whole.refs, whole.total) == (one_by_one.entries, one_by_one.skipped, one_by_one.refs, one_by_one.total)
    assert whole.total == 33 and whole.skipped == {"z": "excluded"}


def test_ipython_history_names_are_classified_once(tmp_path: Path) -> None:
    """After many cells, a trivial cell classifies only the few names IPython rebinds (``_i``, ``_iN``, ...)."""
    script = textwrap.dedent(
        f"""
        import json, pathlib
        from IPython.core.interactiveshell import InteractiveShell
        from kernel.checkpoint.checkpointer import Checkpointer
        from kernel.store.embedded.blobs import FileBlobStore
        calls = []
        class Counting(Checkpointer):
            def is_user_name(self, name, value):
                calls.append(name)
                return super().is_user_name(name, value)
        shell = InteractiveShell.instance()
        cp = Counting(FileBlobStore(pathlib.Path({str(tmp_path / "blobs")!r})).open(), hidden=shell.user_ns_hidden)
        manifest = None
        for i in range(300):
            code = f"w{{i}} = {{i}}\\nw{{i}}"
            assert shell.run_cell(code, store_history=True).success
            manifest, _ = cp.capture(shell.user_ns, code=code, previous=manifest)
        calls.clear()
        assert shell.run_cell("pass", store_history=True).success
        manifest, report = cp.capture(shell.user_ns, code="pass", previous=manifest)
        print(json.dumps([len(shell.user_ns), len(manifest.entries), report.changed, sorted(calls)]))
        """
    )
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, env=env, check=True)
    size, entries, changed, calls = json.loads(out.stdout.strip().splitlines()[-1])
    assert size > 900 and entries == 300 and changed == []
    assert len(calls) < 20, calls  # not the 900 names of the namespace
