"""The embedded store under a real Resonate instance (no kernel, no mocks).

``DurableRuntime`` runs Resonate on its own loop thread over an
``EmbeddedStore``. Executions are driven the way the kernel drives them: expect
``exec:<msg_id>`` on the dispatcher, submit it, receive the handoff when the
engine starts it, and complete the handoff with the cell's outcome.
"""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel.core.models import CellError, CellOutcome, CellResult, ExecutionParams, Timings
from kernel.durable.dispatcher import CellDispatcher
from kernel.durable.runtime import DurableRuntime
from kernel.store.embedded.catalog import EmbeddedCatalog
from kernel.store.embedded.store import EmbeddedStore

SESSION = "store-test"
WAIT = 10.0


def params(msg_id: str, code: str = "1", count: int = 1) -> ExecutionParams:
    return ExecutionParams(
        session=SESSION,
        msg_id=msg_id,
        code=code,
        execution_count=count,
        kernel_pid=0,
        nonce=uuid.uuid4().hex,
        submitted_at=time.time(),
    )


def outcome_of(p: ExecutionParams) -> CellOutcome:
    """What a cell would produce: print its code, or fail if it starts with raise."""
    eid = f"exec:{p.msg_id}"
    if p.code.startswith("raise"):
        return CellError(execution_id=eid, execution_count=p.execution_count, ename="ValueError", evalue=p.code)
    now = time.time()
    return CellResult(
        execution_id=eid,
        execution_count=p.execution_count,
        outputs=[{"output_type": "stream", "name": "stdout", "text": p.code}],
        timings=Timings(started=now, finished=now, duration_ms=0.0),
    )


class Engine:
    def __init__(self, path: Path, expect: tuple[str, ...] = ()) -> None:
        pid = uuid.uuid4().hex
        self.dispatcher = CellDispatcher()
        # Executions this engine should receive as soon as it starts.
        self.tickets = {eid: self.dispatcher.expect(eid) for eid in expect}
        self.store = EmbeddedStore(path, SESSION, pid=pid).open()
        self.runtime = DurableRuntime(self.store, session=SESSION, dispatcher=self.dispatcher, pid=pid).start()

    def start(self, p: ExecutionParams) -> Any:
        """Submit an execution and wait until the engine hands it over."""
        eid = f"exec:{p.msg_id}"
        ticket = self.dispatcher.expect(eid)
        record = self.runtime.submit(p)
        assert record.state == "pending"
        return ticket.result(timeout=WAIT)

    def run(self, p: ExecutionParams) -> Any:
        handoff = self.start(p)
        handoff.outcome.set_result(outcome_of(handoff.params))
        return self.runtime.wait_settled(f"exec:{p.msg_id}", timeout=WAIT)

    def close(self) -> None:
        self.runtime.stop()
        self.store.close()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    opened: list[Engine] = []
    yield opened
    for engine in opened:
        engine.close()


def open_engine(engines: list[Engine], path: Path, expect: tuple[str, ...] = ()) -> Engine:
    engine = Engine(path, expect)
    engines.append(engine)
    return engine


def close_engine(engines: list[Engine], engine: Engine) -> None:
    engines.remove(engine)
    engine.close()


def test_promises_survive_close_and_reopen(tmp_path: Path, engines: list[Engine]) -> None:
    path = tmp_path / "store.sqlite3"
    e1 = open_engine(engines, path)
    assert e1.run(params("ok-1", "print('one')", 1)).state == "resolved"
    assert e1.run(params("err-2", "raise now", 2)).state == "rejected"
    close_engine(engines, e1)

    e2 = open_engine(engines, path)
    ok = e2.runtime.get("exec:ok-1")
    assert ok.state == "resolved"
    assert ok.value.data["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "print('one')"}]
    assert e2.runtime.get("exec:err-2").state == "rejected"

    cat = EmbeddedCatalog(path).open()
    try:
        rows = cat.executions(SESSION)
        assert [(r.id, r.state, r.ename) for r in rows] == [
            ("exec:ok-1", "resolved", None),
            ("exec:err-2", "rejected", "ValueError"),
        ]
        err = cat.promise("exec:err-2")
        assert err is not None and err["session"] == SESSION
        assert cat.count(SESSION) == {"resolved": 1, "rejected": 1}
        assert cat.sessions()[0]["session"] == SESSION
    finally:
        cat.close()


def test_settled_promises_are_evicted_and_paged_back_in(tmp_path: Path, engines: list[Engine]) -> None:
    e = open_engine(engines, tmp_path / "store.sqlite3")
    for n in range(5):
        assert e.run(params(f"m{n}", f"print({n})", n + 1)).state == "resolved"
    # Nothing settled stays in memory...
    assert not [pid for pid in e.store.state.promises if pid.startswith("exec:m")]
    # ...and everything settled can still be read through the engine.
    for n in range(5):
        rec = e.runtime.get(f"exec:m{n}")
        assert rec.state == "resolved"
        assert rec.value.data["execution_count"] == n + 1


def test_resubmitting_a_settled_execution_returns_the_stored_one(tmp_path: Path, engines: list[Engine]) -> None:
    path = tmp_path / "store.sqlite3"
    e1 = open_engine(engines, path)
    original = params("once", "print('once')")
    e1.run(original)
    close_engine(engines, e1)

    e2 = open_engine(engines, path)
    ticket = e2.dispatcher.expect("exec:once")
    again = e2.runtime.submit(params("once", "print('twice')"))
    assert again.state == "resolved"
    assert again.param.data["args"][0]["nonce"] == original.nonce
    assert again.value.data["outputs"][0]["text"] == "print('once')"
    time.sleep(0.5)
    assert not ticket.done(), "a settled execution was handed out to run again"


CRASHING_ENGINE = """
import sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from test_store import Engine, params

e = Engine(Path(sys.argv[1]))
e.start(params("stuck", "while True: pass", 7))
print("running", flush=True)
import time; time.sleep(600)
"""


def test_execution_running_in_a_killed_process_is_redelivered_on_reopen(tmp_path: Path, engines: list[Engine]) -> None:
    path = tmp_path / "store.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_ENGINE, str(path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the engine process never started the execution"
        assert proc.stdout.readline() == "running\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT)

    cat = EmbeddedCatalog(path).open()
    try:
        assert [(r.id, r.state) for r in cat.executions(SESSION)] == [("exec:stuck", "pending")]
    finally:
        cat.close()

    # The dead process's lease is released on open: the execution is handed
    # to the new engine at once (not one lease later), with its original params.
    e = open_engine(engines, path, expect=("exec:stuck",))
    handoff = e.tickets["exec:stuck"].result(timeout=WAIT)
    assert (handoff.params.msg_id, handoff.params.execution_count) == ("stuck", 7)
    handoff.outcome.set_result(
        CellError(execution_id="exec:stuck", execution_count=7, ename="KernelExitInterruption", evalue="killed")
    )
    assert e.runtime.wait_settled("exec:stuck", timeout=WAIT).state == "rejected"
    cat = EmbeddedCatalog(path).open()
    try:
        [row] = cat.executions(SESSION)
        assert (row.state, row.ename, row.execution_count) == ("rejected", "KernelExitInterruption", 7)
    finally:
        cat.close()


def test_planted_pickle_in_a_rejection_is_never_unpickled(tmp_path: Path) -> None:
    """Whoever can write the store must not be able to run code in a kernel
    through the SDK's ``__py_pickle`` error payload."""
    import base64
    import pickle

    from kernel.store.embedded.outside import settle_request

    marker = tmp_path / "pwned"

    class Exploit(Exception):
        def __reduce__(self):  # type: ignore[override]
            return (open, (str(marker), "w"))

    store = EmbeddedStore(tmp_path / "store.sqlite3", "s").open()
    runtime = DurableRuntime(store, session="s", dispatcher=CellDispatcher()).start()
    try:
        runtime.create("exec:planted", int(time.time() * 1000) + 60_000, {"x": 1}, {})
        planted = {"__type": "error", "message": "boom", "__py_pickle": base64.b64encode(pickle.dumps(Exploit())).decode()}
        store.apply(settle_request("exec:planted", "rejected", planted))
        record = runtime.wait_settled("exec:planted", timeout=10)
        assert record.state == "rejected"
        assert "__py_pickle" not in record.value.data
        assert not marker.exists()
    finally:
        runtime.stop()
        store.close()


@pytest.mark.parametrize("code", ["print('batched')", "raise batched"])
def test_a_cell_settled_with_its_checkpoint_in_one_batch_stores_what_its_task_would(
    tmp_path: Path, engines: list[Engine], code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The end of a cell as one transaction (kernel.durable.inline): the checkpoint and
    the execution's settle together, with the value the SDK's own fulfill stores; the
    SDK's fulfill afterwards is answered as done (no 409, no release, nothing logged)."""
    from kernel.core.models import ResolvedPromise

    path = tmp_path / "store.sqlite3"
    engine = open_engine(engines, path)
    assert engine.runtime.atomic
    by_task = engine.run(params("by-task", code, 1))  # the SDK settles it through its task
    handoff = engine.start(params("by-batch", code, 2))
    checkpoint = ResolvedPromise(id="ckpt:s:1", timeout_at_ms=int(time.time() * 1000) + 60_000, param={"k": 1}, tags={}, value={"v": 1})
    outcome = outcome_of(handoff.params)
    with caplog.at_level("DEBUG"):
        engine.runtime.settle_cell(checkpoint, "exec:by-batch", outcome)
        # Both are on disk now, before durable_execute has its outcome.
        cat = EmbeddedCatalog(path).open()
        try:
            assert cat.promise("exec:by-batch")["state"] == by_task.state  # type: ignore[index]
            assert cat.promise("ckpt:s:1")["state"] == "resolved"  # type: ignore[index]
        finally:
            cat.close()
        handoff.outcome.set_result(outcome)
        by_batch = engine.runtime.wait_settled("exec:by-batch", timeout=WAIT)
        wait_until = time.monotonic() + WAIT
        while engine.store.state.tasks.get("exec:by-batch") is not None and time.monotonic() < wait_until:
            time.sleep(0.01)  # the SDK's fulfill, then the task's eviction
        engine.runtime.create("exec:after", int(time.time() * 1000) + 60_000, None, {})  # one more request: the heartbeat stopped
    assert by_batch.state == by_task.state
    strip = lambda data: {k: v for k, v in data.items() if k not in ("execution_id", "execution_count", "timings", "message")}  # noqa: E731
    if by_task.state == "resolved":
        assert strip(by_batch.value.data) == strip(by_task.value.data)
    else:
        assert by_batch.value.data["message"].replace("by-batch", "by-task").replace('"execution_count":2', '"execution_count":1') == by_task.value.data["message"]
    conflict = re.compile(r'"status":\s*409\b')  # a 409 answer, not "409" inside a random id or base64 value
    logged = [r for r in caplog.records if r.levelno >= 30 or "releasing task" in r.getMessage() or conflict.search(r.getMessage())]
    assert logged == [], [r.getMessage() for r in logged]
    task = engine.store._db.execute("SELECT state FROM tasks WHERE id = 'exec:by-batch'").fetchone()
    assert task == ("fulfilled",)
