"""Listings read summaries, not records: what they show is what decoding every record shows.

``pyrepl3 executions`` and ``%durable`` list executions from the columns and the
engine's summaries (the embedded ``listed`` table, the param decoded in SQL on
Postgres); these tests build real stores with real kernels and check the listing
row by row against the full records it no longer reads. How fast it is:
benchmarks/bench_listings.py.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from harness import Kernel, executions, kernel_env

from kernel.checkpoint.history import RECENT
from kernel.core.settings import Settings
from kernel.store.embedded.database import connect
from kernel.store.records import execution_summary
from kernel.store.registry import opened

pytestmark = pytest.mark.engines("embedded", "postgres")

CELLS = ("x = 1", "print('out ' * 100_000)", "1/0", "raise KeyError('k')", "y = x + 1\ny", "")


def _listing_and_records(home: Path, session: str) -> tuple[list[dict], list[dict]]:
    """The catalog's listing of ``session`` and the same rows built from the full records (as before)."""
    with opened(Settings.load(kernel_env(home))) as engine:
        catalog = engine.catalog()
        try:
            listed = catalog.executions(session)
            decoded = [execution_summary(catalog.promise(row.id)) for row in listed]  # type: ignore[arg-type]
            assert [r.id for r in catalog.executions(session, limit=2)] == [r.id for r in listed[-2:]]
        finally:
            catalog.close()
    return [r.model_dump() for r in listed], [r.model_dump() for r in decoded]


def test_executions_listing_matches_the_records(kernel: Kernel, home: Path, store) -> None:
    for i, code in enumerate(CELLS):
        kernel.execute(code, cell_id=f"cell-{i}")
    session = store.session("test-session")
    listed, decoded = _listing_and_records(home, session)
    assert len(listed) == len(CELLS)
    assert listed == decoded
    assert [r["code"] for r in listed] == list(CELLS)
    assert [r["ename"] for r in listed] == [None, None, "ZeroDivisionError", "KeyError", None, None]
    assert [r["cell_id"] for r in listed] == [f"cell-{i}" for i in range(len(CELLS))]
    assert [r["execution_count"] for r in listed] == sorted(r["execution_count"] for r in listed)
    assert all(r["state"] in ("resolved", "rejected") for r in listed)
    # The CLI shows the same rows, with the same fields as the records give.
    shown = executions(home, "test-session")
    assert [shown[r["id"]]["code"] for r in listed] == list(CELLS)
    assert {k for row in shown.values() for k in row} == set(listed[0])


@pytest.mark.embedded_only("the listed table is the embedded engine's")
def test_a_store_from_before_summaries_is_listed_then_filled(kernel: Kernel, home: Path, store) -> None:
    """A file written before the ``listed`` table is listed from its records; the first
    writable open gives every execution its summary, and the listing stays the same."""
    for code in CELLS[:3]:
        kernel.execute(code)
    kernel.close()
    session = store.session("test-session")
    before, _ = _listing_and_records(home, session)
    path = home / "store.sqlite3"
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TABLE listed")
        conn.execute("DELETE FROM meta WHERE key = 'listed'")
        conn.commit()
    finally:
        conn.close()
    old, decoded = _listing_and_records(home, session)
    connect(path).close()  # what a kernel's open does: fills the table from the records, once
    conn = sqlite3.connect(path)
    try:
        filled = conn.execute("SELECT count(*) FROM listed").fetchone()[0]
        marked = conn.execute("SELECT value FROM meta WHERE key = 'listed'").fetchone()
    finally:
        conn.close()
    after, _ = _listing_and_records(home, session)
    assert (filled, marked) == (3, ("1",))
    assert before == old == decoded == after
    assert [r["ename"] for r in after] == [None, None, "ZeroDivisionError"]


def test_checkpoints_newest_first_limit(kernel: Kernel, home: Path, store) -> None:
    """``checkpoints(session, limit)``: the newest ``limit`` records, oldest first, as in the full list."""
    for i in range(RECENT + 2):
        kernel.ok(f"v = {i}")
    with opened(Settings.load(kernel_env(home))) as engine:
        catalog = engine.catalog()
        try:
            full = catalog.checkpoints(store.session("test-session"))
            newest = catalog.checkpoints(store.session("test-session"), 3)
            one = catalog.checkpoints(store.session("test-session"), 1)
        finally:
            catalog.close()
    assert len(full) == RECENT + 2
    assert newest == full[-3:] and one == full[-1:]


@pytest.mark.embedded_only("edits store.sqlite3")
def test_a_start_past_the_recent_refused_checkpoints_restores_an_older_one(kernels, home: Path) -> None:
    """Every one of the newest RECENT checkpoints refused: the start still finds the newest that verifies."""
    kernel = kernels.start(session="older")
    for i in range(RECENT + 2):
        kernel.ok(f"v = {i}")
    kernel.close()
    db = sqlite3.connect(home / "store.sqlite3")
    try:
        rows = db.execute("SELECT id, record FROM promises WHERE kind = 'checkpoint' ORDER BY id DESC LIMIT ?", (RECENT,)).fetchall()
        for pid, blob in rows:
            record = json.loads(blob)
            value = json.loads(base64.b64decode(record["value"]["data"]))
            value["manifest"]["skipped"] = {"injected": "by an attacker"}
            record["value"]["data"] = base64.b64encode(json.dumps(value).encode()).decode()
            db.execute("UPDATE promises SET record = ? WHERE id = ?", (json.dumps(record).encode(), pid))
        db.commit()
    finally:
        db.close()
    fresh = kernels.start(session="older")
    run = fresh.ok("print(v)")
    assert run.stream("stdout") == "1\n"  # the newest genuine one: after `v = 1`
    assert "refusing to load it" in run.stream("stderr"), run.stream("stderr")
