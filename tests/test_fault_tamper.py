"""Issue 10, point 4: nothing executes from the store unless this key signed it.

Real kernels write a real store; with no kernel running, the test tampers with
the rows the way anyone who can write the store could (sqlite3 on
``<home>/store.sqlite3``; psycopg on ``resonate.promises``), then starts a
kernel on it. Planted pickles unpickle into ``open(marker, 'w')``: the marker
must never appear, whether the execution is resumed by ``%durable resume`` or
by ``PYREPL3_AUTO_RESUME=1`` at start. Edited code must never run; checkpoints
copied to a higher sequence number or into another session are refused. An
untampered control trial in every cycle proves the same path resumes when
nothing was touched (so a refusal is not just everything breaking).
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from kernel.core.ids import SESSION_TAG
from harness import KernelFactory, Store, kernel_env, show, wait_for

pytestmark = pytest.mark.engines("embedded", "postgres")


class _Planted:
    """Unpickles into ``open(path, 'w')``: proof that a pickle from the store was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def planted(marker: Path) -> str:
    return base64.b64encode(pickle.dumps(_Planted(marker))).decode()


def _b64json(data: Any) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


class Rows:
    """The store's promise rows, read and written behind the kernel's back."""

    def __init__(self, home: Path, store: Store) -> None:
        self.home, self.store = home, store

    # -- engine-specific ------------------------------------------------------

    def _sqlite(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "store.sqlite3", timeout=30)

    def _pg(self) -> Any:
        import psycopg

        return psycopg.connect(self.store.dsn, autocommit=True)

    def _column(self, field: str) -> str:
        return {"param": "param_data", "value": "value_data"}[field]

    def state(self, pid: str) -> str | None:
        if self.store.kind == "embedded":
            if not (self.home / "store.sqlite3").exists():
                return None
            with self._sqlite() as db:
                row = db.execute("SELECT state FROM promises WHERE id = ?", (pid,)).fetchone()
        else:
            with self._pg() as db:
                row = db.execute("SELECT state FROM resonate.promises WHERE id = %s", (pid,)).fetchone()
        return row[0] if row else None

    def data(self, pid: str, field: str) -> Any:
        if self.store.kind == "embedded":
            with self._sqlite() as db:
                (blob,) = db.execute("SELECT record FROM promises WHERE id = ?", (pid,)).fetchone()
            encoded = json.loads(blob)[field]["data"]
        else:
            with self._pg() as db:
                (encoded,) = db.execute(f"SELECT {self._column(field)} FROM resonate.promises WHERE id = %s", (pid,)).fetchone()
        return json.loads(base64.b64decode(encoded))

    def set_data(self, pid: str, field: str, data: Any) -> None:
        if self.store.kind == "embedded":
            with self._sqlite() as db:
                (blob,) = db.execute("SELECT record FROM promises WHERE id = ?", (pid,)).fetchone()
                record = json.loads(blob)
                record[field]["data"] = _b64json(data)
                db.execute("UPDATE promises SET record = ? WHERE id = ?", (json.dumps(record).encode(), pid))
        else:
            with self._pg() as db:
                db.execute(f"UPDATE resonate.promises SET {self._column(field)} = %s WHERE id = %s", (_b64json(data), pid))

    def copy(self, source: str, target: str, session: str) -> None:
        """Copy the promise ``source`` to a new row ``target`` of ``session`` (stored name)."""
        if self.store.kind == "embedded":
            with self._sqlite() as db:
                row = db.execute("SELECT state, kind, branch, created_at, settled_at, record FROM promises WHERE id = ?", (source,)).fetchone()
                record = json.loads(row[5])
                record["id"] = target
                record["tags"] = {**record.get("tags", {}), SESSION_TAG: session}
                db.execute(
                    "INSERT INTO promises (id, session, state, kind, branch, created_at, settled_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (target, session, row[0], row[1], target, row[3] + 1, row[4], json.dumps(record).encode()),
                )
        else:
            with self._pg() as db:
                (tags,) = db.execute("SELECT tags FROM resonate.promises WHERE id = %s", (source,)).fetchone()
                db.execute(
                    "INSERT INTO resonate.promises (id, state, param_headers, param_data, value_headers, value_data, tags,"
                    " timeout_at, created_at, settled_at) SELECT %s, state, param_headers, param_data, value_headers, value_data,"
                    " %s::jsonb, timeout_at, created_at + 1, settled_at FROM resonate.promises WHERE id = %s",
                    (target, json.dumps({**tags, SESSION_TAG: session}), source),
                )
                db.execute(
                    "INSERT INTO pyrepl3.promises (id, session, kind, created_at, state)"
                    " SELECT %s, %s, kind, created_at + 1, state FROM pyrepl3.promises WHERE id = %s",
                    (target, session, source),
                )

    def checkpoints(self, session: str) -> list[str]:
        """Ids of a session's (stored name) checkpoints, oldest first."""
        if self.store.kind == "embedded":
            with self._sqlite() as db:
                rows = db.execute("SELECT id FROM promises WHERE session = ? AND kind = 'checkpoint' ORDER BY id", (session,)).fetchall()
        else:
            with self._pg() as db:
                rows = db.execute("SELECT id FROM pyrepl3.promises WHERE session = %s AND kind = 'checkpoint' ORDER BY id", (session,)).fetchall()
        return [r[0] for r in rows]

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` as a well-formed blob (named by its hash), as an attacker could."""
        digest = hashlib.sha256(data).hexdigest()
        if self.store.kind == "embedded":
            path = self.home / "blobs" / digest[:2] / digest[2:]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            with self._pg() as db:
                db.execute("INSERT INTO pyrepl3.blobs VALUES (%s, %s, 1, 0) ON CONFLICT DO NOTHING", (digest, len(data)))
                db.execute("INSERT INTO pyrepl3.blob_chunks VALUES (%s, 0, %s) ON CONFLICT DO NOTHING", (digest, data))
        return digest


def checkpoint_value_with_planted_blob(rows: Rows, value: dict[str, Any], marker: Path) -> dict[str, Any]:
    """The checkpoint ``value`` with entry ``x`` pointing at a planted (well-formed) blob."""
    blob = pickle.dumps(_Planted(marker), protocol=5)
    digest = rows.put_blob(blob)
    entry = value["manifest"]["entries"]["x"]
    entry.update(blob=digest, blob_size=len(blob), buffers=[], buffer_sizes=[], group=[])
    return value


# -- steps, step values and the code of an interrupted execution ------------------------------------------

STEP_KINDS = ("untampered", "pickled step result", "json step result", "step value", "exec code", "params copied")


def _interrupted_cell(ready: Path, gate: Path, out: Path) -> str:
    """A step value (read back when resumed) and two steps (a pickled and a JSON
    result), then waits at ``gate``."""
    return f"""
import os, time
if durable.get_checkpoint('acc', None) is None:
    durable.checkpoint('acc', {{'seen': {{1, 2}}}})
first = durable.run(lambda: {{41}})
second = durable.run(lambda: 1)
open({str(ready)!r}, 'w').close()
while not os.path.exists({str(gate)!r}):
    time.sleep(0.05)
acc = durable.get_checkpoint('acc')
open({str(out)!r}, 'w').write(repr((sorted(first), second, sorted(acc['seen']))))
"""


@pytest.mark.timeout(3600)  # --fault-trials of them, a few seconds each; every wait has its own timeout
def test_nothing_runs_from_tampered_steps_or_code(kernels: KernelFactory, home: Path, store: Store, tmp_path: Path,
                                                  fault_trials: int, fault_rng: random.Random) -> None:
    rows = Rows(home, store)
    trials = refused = controls = at_start = 0
    markers: list[Path] = []
    donor: str | None = None  # a genuine execution whose params a later trial copies into another
    for trial in range(max(fault_trials, len(STEP_KINDS))):
        kind = STEP_KINDS[trial % len(STEP_KINDS)]
        auto = fault_rng.random() < 0.5
        session = f"steps-{trial}"
        ready, gate, out, marker = (tmp_path / f"{name}-{trial}" for name in ("ready", "gate", "out", "marker"))
        markers.append(marker)
        victim = kernels.start(session=session)
        msg_id = victim.send_execute(_interrupted_cell(ready, gate, out))
        eid = f"exec:{msg_id}"
        wait_for(ready.exists, what="the steps to be journaled")
        wait_for(lambda: rows.state(f"{eid}:step:2") == "resolved", what="the steps stored")
        victim.kill9()
        gate.touch()
        if kind == "pickled step result":
            data = rows.data(f"{eid}:step:1", "value")
            rows.set_data(f"{eid}:step:1", "value", {**data, "pickle": planted(marker)})
        elif kind == "json step result":
            data = rows.data(f"{eid}:step:2", "value")
            assert data["json"] == 1
            rows.set_data(f"{eid}:step:2", "value", {**data, "json": 999})
        elif kind == "step value":
            data = rows.data(f"{eid}:ckpt:acc:1", "value")
            rows.set_data(f"{eid}:ckpt:acc:1", "value", {**data, "pickle": planted(marker)})
        elif kind == "exec code":
            param = rows.data(eid, "param")
            param["args"][0]["code"] = f"open({str(marker)!r}, 'w').close()"
            rows.set_data(eid, "param", param)
        elif kind == "params copied":
            # Genuine, signed params of another execution, copied verbatim: signed by this
            # key, but for another promise id, so they must not verify under this one.
            assert donor is not None
            param = rows.data(eid, "param")
            param["args"][0] = rows.data(donor, "param")["args"][0]
            rows.set_data(eid, "param", param)
        env = kernel_env(home, session, **({"PYREPL3_AUTO_RESUME": "1"} if auto else {}))
        fresh = kernels.start(env=env)
        if auto:
            wait_for(lambda: rows.state(eid) not in (None, "pending"), timeout=90, what="the auto-resume to settle it")
            run = fresh.ok("%durable")
        else:
            run = fresh.ok("%durable resume", timeout=90)
        record = show(home, eid)
        fresh.close()
        trials += 1
        at_start += auto
        assert not marker.exists(), f"trial {trial} ({kind}): a planted pickle or edited code ran"
        if kind == "untampered":
            controls += 1
            assert record["state"] == "resolved", (kind, record)
            assert out.read_text() == "([41], 1, [1, 2])"
            donor = eid
            continue
        assert record["state"] == "rejected", (kind, auto, record)
        error = record["error"]
        text = run.stream("stdout") + run.stream("stderr")
        if kind in ("exec code", "params copied"):
            assert error["ename"] == "TamperedExecution", error
            assert eid in error["evalue"] and "RES005" in error["evalue"], error
            assert "not resumed" in text and eid in text, text
        else:
            promise = {"pickled step result": f"{eid}:step:1", "json step result": f"{eid}:step:2",
                       "step value": f"{eid}:ckpt:acc:1"}[kind]
            assert error["ename"] == "SignatureError", error
            assert promise in error["evalue"] and "refusing to load it" in error["evalue"], error
            assert not out.exists(), "the cell went on with a value it refused"
        refused += 1
    print(f"\n[{store.kind}] tampered steps/code trials: {trials} (untampered controls {controls}; "
          f"{at_start} by PYREPL3_AUTO_RESUME=1, {trials - at_start} by %durable resume), "
          f"refused: {refused}, ran planted code: {sum(m.exists() for m in markers)}")
    assert refused == trials - controls


# -- namespace checkpoints ------------------------------------------------------------------------------

CKPT_KINDS = ("older copied to a higher seq", "copied into another session", "planted blob in the manifest", "blob replaced")


@pytest.mark.timeout(3600)  # as above
def test_tampered_checkpoints_are_never_loaded(kernels: KernelFactory, home: Path, store: Store, tmp_path: Path,
                                               fault_trials: int, fault_rng: random.Random) -> None:
    rows = Rows(home, store)
    trials = refused = 0
    markers: list[Path] = []
    for trial in range(max(fault_trials // 2, len(CKPT_KINDS))):
        kind = CKPT_KINDS[trial % len(CKPT_KINDS)]
        victim_session = f"victim-{trial}"
        marker = tmp_path / f"marker-{trial}"
        markers.append(marker)
        token = uuid.uuid4().hex[:12]  # content no other trial (or test on a shared database) has
        victim = kernels.start(session=victim_session)
        for value in (1, 2, 3):
            victim.ok(f"x = {{'{token}-{value}'}}")  # a set: pickled, not a module or plain JSON
        if fault_rng.random() < 0.5:
            victim.kill9()
        else:
            victim.close()
        stored = store.session(victim_session)
        ids = wait_for(lambda: len(found := rows.checkpoints(stored)) == 3 and found, what="three checkpoints")
        restore_session, expected = victim_session, f"{{'{token}-3'}}"
        if kind == "older copied to a higher seq":
            rows.copy(ids[0], ids[0][: -10] + f"{4:010d}", stored)  # restored as the latest, it would say -1
        elif kind == "copied into another session":
            restore_session, expected = f"other-{trial}", None
            other = store.session(restore_session)
            prefix = "ckpt:" + hashlib.sha256(other.encode()).hexdigest()[:24] + ":"
            rows.copy(ids[-1], f"{prefix}{1:010d}", other)
        elif kind == "planted blob in the manifest":
            value = rows.data(ids[-1], "value")
            rows.set_data(ids[-1], "value", checkpoint_value_with_planted_blob(rows, value, marker))
            expected = f"{{'{token}-2'}}"  # the newest checkpoint that verifies
        else:  # the genuine blob's bytes replaced by a planted pickle: its hash no longer matches
            digest = rows.data(ids[-1], "value")["manifest"]["entries"]["x"]["blob"]
            _overwrite_blob(rows, digest, pickle.dumps(_Planted(marker), protocol=5))
            expected = None
        fresh = kernels.start(session=restore_session)
        run = fresh.ok("print(repr(x) if 'x' in dir() else None)")
        fresh.close()
        trials += 1
        assert not marker.exists(), f"trial {trial} ({kind}): a planted pickle was loaded"
        assert run.stream("stdout") == f"{expected}\n", (kind, run.stream("stdout"), run.stream("stderr"))
        notice = run.stream("stderr")
        if kind == "blob replaced":
            assert "x" in notice and "corrupt" in notice, notice
        elif expected is None:
            assert "not restored" in notice and "refusing to load it" in notice, notice
        else:
            assert "refused newer checkpoints" in notice and "refusing to load it" in notice, notice
        refused += 1
    print(f"\n[{store.kind}] tampered checkpoint trials: {trials}, refused: {refused}, "
          f"loaded a planted pickle: {sum(m.exists() for m in markers)}")
    assert refused == trials


def _overwrite_blob(rows: Rows, digest: str, data: bytes) -> None:
    if rows.store.kind == "embedded":
        path = rows.home / "blobs" / digest[:2] / digest[2:]
        path.chmod(0o600)
        path.write_bytes(data)
    else:
        with rows._pg() as db:
            db.execute("DELETE FROM pyrepl3.blob_chunks WHERE digest = %s", (digest,))
            db.execute("UPDATE pyrepl3.blobs SET size = %s, chunks = 1 WHERE digest = %s", (len(data), digest))
            db.execute("INSERT INTO pyrepl3.blob_chunks VALUES (%s, 0, %s)", (digest, data))


def test_a_checkpoint_of_an_older_version_is_refused_by_name(kernels: KernelFactory, home: Path, store: Store) -> None:
    """A checkpoint signed before signatures were bound (no ``sealed``) is refused, saying why."""
    rows = Rows(home, store)
    kernel = kernels.start(session="old-format")
    kernel.ok("x = {1}")
    kernel.close()
    [cid] = rows.checkpoints(store.session("old-format"))
    value = rows.data(cid, "value")
    del value["sealed"]
    rows.set_data(cid, "value", value)
    fresh = kernels.start(session="old-format")
    run = fresh.ok("print('x' in dir())")
    assert run.stream("stdout") == "False\n"
    assert "older PyREPL3" in run.stream("stderr") and cid in run.stream("stderr"), run.stream("stderr")



# -- the rule, on its own ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["none", "promise id", "session", "body", "key", "unsigned", "old format"])
def test_a_seal_verifies_only_where_it_was_made(change: str) -> None:
    from kernel.checkpoint.signing import Sealer, SignatureError, Signer

    sealed = Sealer(Signer(b"k"), "victim").seal("exec:a:step:1", {"json": 1})
    reader, pid = Sealer(Signer(b"k"), "victim"), "exec:a:step:1"
    if change == "promise id":
        pid = "exec:a:step:2"
    elif change == "session":
        reader = Sealer(Signer(b"k"), "other")
    elif change == "body":
        sealed["json"] = 2
    elif change == "key":
        reader = Sealer(Signer(b"other key"), "victim")
    elif change == "unsigned":
        del sealed["signature"]
    elif change == "old format":
        del sealed["sealed"]
    if change == "none":
        assert reader.unseal(pid, sealed, "a step") == {"json": 1}
        return
    with pytest.raises(SignatureError, match="refusing to load it") as refused:
        reader.unseal(pid, sealed, "a step")
    assert pid in str(refused.value) and "RES005" in str(refused.value)


def test_a_tampered_or_copied_delta_is_refused(kernels: KernelFactory, home: Path, store: Store, tmp_path: Path) -> None:
    """A checkpoint record holds only what its cell changed (a delta on the full record at its
    ``base``): a delta edited (a planted blob) or copied to a higher sequence number makes every
    checkpoint built on it refused; the newest one whose whole chain verifies is restored."""
    rows = Rows(home, store)
    marker = tmp_path / "marker"
    token = uuid.uuid4().hex[:12]
    kernel = kernels.start(session="delta-tamper")
    for value in (1, 2, 3, 4):
        kernel.ok(f"x{value} = {{'{token}-{value}'}}")
    kernel.close()
    stored = store.session("delta-tamper")
    ids = wait_for(lambda: len(found := rows.checkpoints(stored)) == 4 and found, what="four checkpoints")
    values = [rows.data(cid, "value") for cid in ids]
    first = int(ids[0][-10:])
    assert [v["base"] for v in values] == [first] * 4, "one full record, three deltas"
    assert [sorted(v["manifest"]["entries"]) for v in values] == [["x1"], ["x2"], ["x3"], ["x4"]]
    blob = pickle.dumps(_Planted(marker), protocol=5)
    values[2]["manifest"]["entries"]["x3"].update(blob=rows.put_blob(blob), blob_size=len(blob))
    rows.set_data(ids[2], "value", values[2])
    rows.copy(ids[1], ids[1][:-10] + f"{first + 4:010d}", stored)  # as the newest, it would drop x3 and x4
    fresh = kernels.start(session="delta-tamper")
    run = fresh.ok("print(sorted(n for n in dir() if n.startswith('x')), x2 == {'%s-2'})" % token)
    fresh.close()
    assert not marker.exists(), "a planted pickle was loaded"
    assert run.stream("stdout") == "['x1', 'x2'] True\n", (run.stream("stdout"), run.stream("stderr"))
    notice = run.stream("stderr")
    assert "refused newer checkpoints" in notice and "refusing to load it" in notice, notice
    assert all(cid in notice for cid in ids[2:]), notice
