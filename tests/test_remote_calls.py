"""durable.rpc and durable.map from real kernels, run by real ``pyrepl3 worker`` processes on Postgres.

Every worker has its own PYREPL3_HOME and working directory and shares only
the database and the session key (PYREPL3_KEY) with the kernel, as a worker
on another machine would. Runs are counted with marker files the functions
write, never with timings.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import harness
from harness import TIMEOUT, KernelFactory, Store, kernel_env, wait_for
from remote_tasks import WorkerProcess

pytestmark = pytest.mark.engines("postgres")


class Workers:
    """A group of ``pyrepl3 worker`` processes (:class:`remote_tasks.WorkerProcess`: each with its
    own home, Jupyter data dir and working directory)."""

    def __init__(self, root: Path, store: Store, key: str) -> None:
        self.root = root
        self.store = store
        self.key = key
        self.group = f"t{uuid.uuid4().hex[:12]}"
        self.procs: list[WorkerProcess] = []

    def start(self, n: int = 1, concurrency: int = 4, *options: str, env: dict[str, str] | None = None) -> list[WorkerProcess]:
        started = [
            WorkerProcess(self.root, self.store.dsn, self.key, group=self.group, name=f"worker{len(self.procs) + i}",
                          concurrency=concurrency, extra=env, options=options)
            for i in range(n)
        ]  # fmt: skip
        self.procs += started
        for worker in started:
            # Ready means subscribed to the group: a test that needs every worker used must not race their start.
            worker.ready(60)
        return started

    def logs(self) -> str:
        return "\n".join(w.log() for w in self.procs)

    def close(self) -> None:
        for worker in self.procs:
            if worker.proc.poll() is None:
                worker.signal(signal.SIGTERM)
        for worker in self.procs:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()


@pytest.fixture
def key() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def workers(tmp_path: Path, store: Store, key: str) -> Iterator[Workers]:
    pool = Workers(tmp_path / "workers", store, key)
    pool.root.mkdir()
    yield pool
    pool.close()
    print(pool.logs())


def _start(kernels: KernelFactory, home: Path, key: str, session: str = "remote", **env: str) -> Any:
    return kernels.start(session=session, env=kernel_env(home, session, PYREPL3_KEY=key, **env))


def _rpc_states(home: Path, session: str) -> dict[str, int]:
    """How many of ``session``'s remote calls are in each state, read from the store as a CLI would."""
    from kernel.core.settings import Settings
    from kernel.store.registry import open_engine

    store = harness.CURRENT
    engine = open_engine(Settings.load({"PYREPL3_STORE": store.dsn, "PYREPL3_HOME": str(home)})).open()
    try:
        return engine.catalog().count(store.session(session), "rpc")
    finally:
        engine.close()


def test_rpc_round_trips(kernels: KernelFactory, home: Path, key: str, workers: Workers) -> None:
    workers.start(1)
    kernel = _start(kernels, home, key)
    g = workers.group
    # By reference (math.sqrt imports on the worker), JSON result.
    run = kernel.ok(f"import math\nh = durable.rpc(math.sqrt, 16, group={g!r})\nprint(h.promise_id)\nprint(h.result(timeout=60), h.done())", timeout=90)
    pid, out = run.stream("stdout").splitlines()
    assert pid.endswith(":rpc:1") and out == "4.0 True"
    # By value (defined in the cell), a pickled result (a set is not JSON), keyword arguments.
    run = kernel.ok(
        textwrap.dedent(f"""
        def spread(x, *, k):
            return {{x, x * k}}
        print(sorted(durable.rpc(spread, 3, k=5, group={g!r}).result(timeout=60)))
        """),
        timeout=90,
    )
    assert run.stream("stdout") == "[3, 15]\n"
    # await in a cell (top-level await), two calls in flight at once.
    run = kernel.ok(f"a = durable.rpc(math.factorial, 5, group={g!r})\nb = durable.rpc(pow, 2, 10, group={g!r})\nprint(await a, await b)", timeout=90)
    assert run.stream("stdout") == "120 1024\n"
    assert run.stream("stderr") == ""


def test_failing_call_raises_remote_failure(kernels: KernelFactory, home: Path, key: str, workers: Workers) -> None:
    workers.start(1)
    kernel = _start(kernels, home, key)
    g = workers.group
    run = kernel.ok(
        textwrap.dedent(f"""
        from resonate.retry import Constant
        from kernel.durable.calls import RemoteFailure
        def boom(x):
            raise ValueError(f"bad {{x}}")
        try:
            durable.rpc(boom, 7, group={g!r}, retries=Constant(delay=0, max_retries=2)).result(timeout=60)
        except RemoteFailure as exc:
            print(exc.ename, "|", exc.evalue, "|", exc.attempts, "|", "boom" in exc.remote_traceback)
            print(exc)
        """),
        timeout=90,
    )
    first, message = run.stream("stdout").splitlines()
    assert first == "ValueError | bad 7 | 3 | True"
    assert "ValueError: bad 7" in message and "3 attempts" in message
    # Uncaught, it is the cell's error, named as the worker's.
    run = kernel.execute(f"durable.rpc(boom, 8, group={g!r}).result(timeout=60)", timeout=90)
    assert run.content["status"] == "error" and run.content["ename"] == "RemoteFailure"
    assert "ValueError: bad 8" in run.content["evalue"]


def test_a_wait_is_interruptible_and_idle(kernels: KernelFactory, home: Path, key: str, workers: Workers, tmp_path: Path) -> None:
    """Ctrl-C ends ``h.result()`` (the cell's KeyboardInterrupt), not the call: its result is there
    later. While it waits, the kernel does not spin (its CPU time over a few seconds is printed)."""
    import psutil

    workers.start(1)
    started, gate = tmp_path / "started", tmp_path / "gate"
    kernel = _start(kernels, home, key)
    kernel.ok(
        textwrap.dedent(f"""
        def held():
            import os, time
            open({str(started)!r}, "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                time.sleep(0.05)
            return "late"
        """)
    )
    msg_id = kernel.send_execute(f"h = durable.rpc(held, group={workers.group!r})\nh.result()")
    wait_for(started.exists, timeout=60, what="the call running on the worker")
    proc = psutil.Process(kernel.pid)
    before, window = sum(proc.cpu_times()[:2]), 3.0
    time.sleep(window)  # a measuring window, not a wait for a condition
    cpu = sum(proc.cpu_times()[:2]) - before
    print(f"kernel CPU while waiting {window:g}s for a remote call: {cpu:.3f}s")
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.content["status"] == "error" and run.content["ename"] == "KeyboardInterrupt", run.content
    assert cpu < window / 2, "the wait spun the CPU"
    # ``await h`` too (ipykernel cancels an interrupted async cell's task: CancelledError).
    msg_id = kernel.send_execute("await h")
    deadline = time.monotonic() + TIMEOUT
    while kernel.next_for("iopub", msg_id, deadline, "execute_input")["header"]["msg_type"] != "execute_input":
        pass
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)
    assert run.content["status"] == "error" and run.content["ename"] in ("CancelledError", "KeyboardInterrupt"), run.content
    gate.touch()
    assert kernel.ok("print(h.result(timeout=60), h.done())", timeout=90).stream("stdout") == "late True\n"


def test_map_in_order_on_two_workers(kernels: KernelFactory, home: Path, key: str, workers: Workers, tmp_path: Path) -> None:
    """A busy worker does not hoard the group's queue: each worker has 2 threads and every call
    waits until both workers have started one, so the map finishes only if the second worker
    gets calls while the first one holds all it can run (on a loaded machine, a timing-only
    version of this test let one worker finish all 50 before the other read the queue)."""
    procs = workers.start(2, concurrency=2)
    seen = tmp_path / "pids"
    seen.mkdir()
    kernel = _start(kernels, home, key)
    run = kernel.ok(
        textwrap.dedent(f"""
        import os, time
        def square(i):
            open(os.path.join({str(seen)!r}, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 60
            while len(os.listdir({str(seen)!r})) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            return [i * i, os.getpid()]
        out = durable.map(square, range(50), group={workers.group!r})
        print([v for v, _ in out] == [i * i for i in range(50)], sorted({{p for _, p in out}}))
        """),
        timeout=120,
    )
    ordered, pids = run.stream("stdout").split(" ", 1)
    assert ordered == "True"
    assert eval(pids) == sorted(p.pid for p in procs), "both workers ran some of the calls"
    assert "50/50" in run.stream("stderr"), "the progress bar counted every call"
    assert _rpc_states(home, "remote") == {"resolved": 50}


def test_map_raises_after_every_call_settled(kernels: KernelFactory, home: Path, key: str, workers: Workers) -> None:
    workers.start(1)
    kernel = _start(kernels, home, key)
    run = kernel.ok(
        textwrap.dedent(f"""
        from kernel.durable.calls import RemoteFailure
        def odd_fails(i):
            if i % 2:
                raise KeyError(i)
            return i
        try:
            durable.map(odd_fails, range(6), group={workers.group!r}, progress=False)
        except RemoteFailure as exc:
            print(exc.evalue, exc.__notes__)
        print(durable.map(odd_fails, [0, 1], group={workers.group!r}, return_exceptions=True, progress=False))
        """),
        timeout=90,
    )
    first, second = run.stream("stdout").splitlines()
    assert first.startswith("1 ") and "3 of 6 calls failed; this is item 1" in first
    assert second.startswith("[0, RemoteFailure(")
    assert _rpc_states(home, "remote") == {"resolved": 4, "rejected": 4}


def test_kernel_killed_mid_map_then_resumed(kernels: KernelFactory, home: Path, key: str, workers: Workers, tmp_path: Path) -> None:
    """100 calls; the kernel is killed while they run; the workers finish them; a new kernel of the
    session resumes the execution and gets every result, none of the finished ones run again."""
    workers.start(2, concurrency=8)
    marks, gate_a, gate_b = tmp_path / "marks", tmp_path / "gate-a", tmp_path / "gate-b"
    marks.mkdir()
    code = textwrap.dedent(f"""
        import os, time, uuid
        def gated(i):
            open(os.path.join({str(marks)!r}, f"start-{{i}}-{{uuid.uuid4().hex}}"), "w").close()
            gate = {str(gate_a)!r} if i < 50 else {str(gate_b)!r}
            deadline = time.monotonic() + 120
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.05)
            open(os.path.join({str(marks)!r}, f"done-{{i}}-{{uuid.uuid4().hex}}"), "w").close()
            return i * 3
        results = durable.map(gated, range(100), group={workers.group!r})
        print("sum", sum(results), results == [i * 3 for i in range(100)])
        """)

    def runs(kind: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for p in marks.glob(f"{kind}-*"):
            i = int(p.name.split("-")[1])
            counts[i] = counts.get(i, 0) + 1
        return counts

    kernel = _start(kernels, home, key)
    msg_id = kernel.send_execute(code)
    wait_for(lambda: sum(_rpc_states(home, "remote").values()) == 100, timeout=60, what="all 100 calls sent")
    wait_for(lambda: len(runs("start")) >= 8, timeout=60, what="calls running on the workers")
    kernel.kill9()
    gate_a.touch()
    wait_for(lambda: _rpc_states(home, "remote").get("resolved", 0) == 50, timeout=120, what="the first 50 finished after the kill")

    fresh = _start(kernels, home, key)
    resumed = fresh.send_execute("%durable resume")
    wait_for(lambda: len(runs("start")) > 50, timeout=60, what="the second half running")  # pending while the cell resumes
    gate_b.touch()
    run = fresh.collect(resumed, timeout=180)
    assert run.content["status"] == "ok", run.content
    out = run.stream("stdout")
    assert f"exec:{msg_id}" in out and "resumed and completed" in out
    assert f"sum {3 * sum(range(100))} True" in out
    starts, dones = runs("start"), runs("done")
    print(f"kill -9 mid-map: 100 calls, started {sum(starts.values())} times, finished {sum(dones.values())} times")
    assert sorted(dones) == list(range(100)) and set(dones.values()) == {1}, "every call finished exactly once"
    assert set(starts.values()) == {1}, "no call was sent or run twice"
    assert _rpc_states(home, "remote") == {"resolved": 100}


def test_remote_workers_notebook_runs(kernels: KernelFactory, home: Path, key: str, workers: Workers, tmp_path: Path) -> None:
    """notebooks/remote_workers.ipynb, top to bottom on two workers (its kill story is by hand; the
    kill -9 test above is the same story, automated)."""
    import nbformat
    from nbclient import NotebookClient

    workers.start(2, concurrency=2)
    nb = nbformat.read(Path(__file__).parent.parent / "notebooks" / "remote_workers.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=120, startup_timeout=TIMEOUT, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=kernel_env(home, "notebook", PYREPL3_KEY=key, REMOTE_DEMO_GROUP=workers.group))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert re.search(r"40 results from [12] worker process\(es\)", text), text
    assert "RuntimeError | cannot handle 1 | attempts: 2" in text
    assert "every result is here: 40" in text
    assert _rpc_states(home, "notebook") == {"resolved": 42, "rejected": 1}


def test_worker_killed_mid_map(kernels: KernelFactory, home: Path, key: str, workers: Workers, tmp_path: Path) -> None:
    """End to end from the cell: a worker SIGKILLed while it holds calls of a map; the other worker
    of the group takes them when their lease ends, and the map returns every result in order."""
    a, b = workers.start(2, 2, "--lease", "2")
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    kernel = _start(kernels, home, key)
    msg_id = kernel.send_execute(
        textwrap.dedent(f"""
        import os, time, uuid
        def gated(i):
            open(os.path.join({str(marks)!r}, f"start-{{i}}-{{os.getpid()}}-{{uuid.uuid4().hex}}"), "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                time.sleep(0.05)
            open(os.path.join({str(marks)!r}, f"done-{{i}}-{{os.getpid()}}-{{uuid.uuid4().hex}}"), "w").close()
            return -i
        out = durable.map(gated, range(20), group={workers.group!r})
        print(out == [-i for i in range(20)])
        """)
    )

    def marked(kind: str, pid: int | None = None) -> list[int]:
        return [int(p.name.split("-")[1]) for p in marks.glob(f"{kind}-*") if pid is None or p.name.split("-")[2] == str(pid)]

    wait_for(lambda: marked("start", a.pid) and marked("start", b.pid), timeout=60, what="both workers running calls")
    a.kill()
    a.wait(timeout=TIMEOUT)
    held = marked("start", a.pid)
    gate.touch()
    run = kernel.collect(msg_id, timeout=120)
    assert run.content["status"] == "ok", run.content
    assert run.stream("stdout") == "True\n"
    done = marked("done")
    print(f"worker SIGKILL mid-map: it held {len(held)} call(s); runs started {len(marked('start'))}, finished {len(done)} for 20 calls")
    assert sorted(done) == list(range(20)), "every call finished once, none by the dead worker"
    assert 1 <= len(held) <= 2, "the dead worker held at most its concurrency"
    assert sorted(marked("start", b.pid)) == list(range(20)), "the other worker ran every call once, the dead one's again"


def test_handles_come_back_after_kill9(kernels: KernelFactory, home: Path, key: str, workers: Workers, tmp_path: Path) -> None:
    """Handles kept in the namespace are in its checkpoint: after a kill -9 the next kernel of the
    session has them back, and they find their calls (finished meanwhile, or still running)."""
    workers.start(1)
    gate = tmp_path / "gate"
    kernel = _start(kernels, home, key)
    kernel.ok(
        textwrap.dedent(f"""
        def held(i):
            import os, time
            deadline = time.monotonic() + 120
            while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                time.sleep(0.05)
            return i * 7
        hs = [durable.rpc(held, i, group={workers.group!r}) for i in range(5)]
        """)
    )
    kernel.kill9()
    fresh = _start(kernels, home, key)
    run = fresh.ok("print(hs[0])\nprint(hs[0].done())")
    assert run.stream("stdout").splitlines()[0].endswith(":rpc:1 __main__.held restored>")
    gate.touch()
    run = fresh.ok("print([h.result(timeout=60) for h in hs], all(h.done() for h in hs))", timeout=90)
    assert run.stream("stdout") == "[0, 7, 14, 21, 28] True\n"
    assert "hs" not in fresh.ok("%durable").stream("stdout").split("not saved in the checkpoint:")[-1].split("\n")[0]


@pytest.mark.embedded_only(reason="the embedded store's own refusal")
def test_embedded_store_gives_a_clear_error(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="solo")
    for code in ("durable.rpc(len, [1], group='g')", "durable.map(len, [[1]], group='g')"):
        run = kernel.execute(code)
        assert run.content["status"] == "error" and run.content["ename"] == "ConfigurationError"
        assert "PYREPL3_STORE" in run.content["evalue"] and "durable.rpc" in run.content["evalue"]


class _Runtime:
    """The runtime's create, answering with promises that exist already (a resumed execution's)."""

    def __init__(self, stored_function: str) -> None:
        self.stored = stored_function
        self.created: list[str] = []

    def target_of(self, group: str) -> str:
        return f"poll://any@{group}"

    def create_many(self, promises: list[Any], *, what: str) -> list[Any]:
        from resonate.types import PromiseRecord, Value

        self.created += [p[0] for p in promises]
        param = Value(data={"func": "pyrepl3_call", "args": [{"function": self.stored}]})
        return [PromiseRecord(id=p[0], state="resolved", param=param, timeout_at=p[1]) for p in promises]


def test_a_changed_cell_is_refused_on_resume() -> None:
    """A resumed execution whose call number holds a call of another function: the cell
    changed since it first ran, and says so instead of returning the other call's result."""
    from kernel.checkpoint.signing import Sealer, Signer
    from kernel.core.errors import ConfigurationError
    from kernel.durable.calls import RemoteCallError
    from kernel.durable.remote import RemoteCalls

    runtime = _Runtime("builtins.max")
    calls = RemoteCalls(runtime, Sealer(Signer(b"k" * 32), "s"), trace=dict)  # type: ignore[arg-type]
    with calls.executing("exec:m"), pytest.raises(RemoteCallError, match=r"exec:m:rpc:1 was sent as a call of builtins.max .* now calls builtins.len"):
        calls.rpc(len, ([1],), {}, group="g")
    with calls.executing("exec:m"), pytest.raises(ConfigurationError, match="worker group"):
        calls.rpc(len, ([1],), {}, group="pyrepl3-x")
    with calls.executing("exec:m"), pytest.raises(ConfigurationError, match="timeout"):
        calls.rpc(len, ([1],), {}, group="g", timeout=0)
    with pytest.raises(RemoteCallError, match="inside a cell"):
        calls.rpc(len, ([1],), {}, group="g")
    with calls.executing("exec:m"):
        assert calls.map(len, [], group="g") == []
    assert runtime.created == ["exec:m:rpc:1"], "numbering restarts per run; a refused call creates nothing"


class _Watched:
    """A runtime whose watches the test completes, and whose reads it scripts."""

    def __init__(self, reads: list[Any]) -> None:
        import concurrent.futures as cf

        self.watches: list[cf.Future[Any]] = []
        self.reads = reads
        self._cf = cf

    def watch(self, promise_id: str) -> Any:
        self.watches.append(self._cf.Future())
        return self.watches[-1]

    def result(self, fut: Any, timeout: float | None = None) -> Any:
        return fut.result(timeout)

    def get(self, promise_id: str) -> Any:
        return self.reads.pop(0)


def _record(state: str, value: Any = None, timeout_at: int = 2**41) -> Any:
    from resonate.types import PromiseRecord, Value

    return PromiseRecord(id="exec:m:rpc:1", state=state, value=Value(data=value), timeout_at=timeout_at)


def test_handle_outcomes_and_a_failed_watch() -> None:
    """A watch that fails is followed by direct reads (once a second) and a new watch; the engine's
    timeout is TimeoutError naming the call; a local wait's timeout leaves the call going."""
    import threading

    from kernel.checkpoint.signing import Sealer, Signer
    from kernel.durable.calls import seal_result
    from kernel.durable.remote import RemoteHandle

    sealer = Sealer(Signer(b"k" * 32), "s")
    done = _record("resolved", seal_result(sealer, "exec:m:rpc:1", {"x": 1}, started_at=0.0, attempts=1, worker="w"))
    runtime = _Watched([_record("pending")])
    handle = RemoteHandle(runtime, sealer, _record("pending"), "f")  # type: ignore[arg-type]
    with pytest.raises(TimeoutError, match="has not finished after 0.1s"):
        handle.result(timeout=0.1)
    assert not handle.done()
    runtime.watches[0].set_exception(ConnectionError("engine lost"))
    threading.Timer(0.5, lambda: runtime.watches[-1].set_result(done)).start()
    assert handle.result(timeout=30) == {"x": 1} and handle.done()
    assert len(runtime.watches) == 2, "read once, then watched again"

    timed_out = _Watched([])
    handle = RemoteHandle(timed_out, sealer, _record("pending"), "f")  # type: ignore[arg-type]
    timed_out.watches[0].set_result(_record("rejected_timedout"))
    with pytest.raises(TimeoutError, match=r"exec:m:rpc:1 \(f\) timed out"):
        handle.result()
    # Already settled when created (a resumed execution): no watch at all.
    settled = _Watched([])
    assert RemoteHandle(settled, sealer, done, "f").result() == {"x": 1} and not settled.watches  # type: ignore[arg-type]


def test_a_remote_call_is_a_child_span_of_its_cell_on_the_worker(kernels: KernelFactory, home: Path, key: str, workers: Workers, tmp_path: Path) -> None:
    """W3C trace context travels in the (sealed) call: the worker's ``pyrepl3.rpc.run`` span is a
    child of the cell's ``pyrepl3.rpc``, itself a child of the execution; the queue time is recorded."""
    import json

    otel = str(Path(__file__).parent / "otel")
    dump_file = tmp_path / "worker-otel.json"
    workers.start(1, env={"PYTHONPATH": otel, "PYREPL3_OTEL_SETUP": "otel_setup:install_to_file", "OTEL_TEST_DUMP": str(dump_file)})
    kernel = _start(kernels, home, key, PYREPL3_OTEL_SETUP="otel_setup:install", PYTHONPATH=otel)
    ran = kernel.ok(f"import math\nprint(durable.rpc(math.factorial, 5, group={workers.group!r}).result(timeout=60))", timeout=90)
    assert ran.stream("stdout").strip() == "120"
    out = kernel.ok("import otel_setup\notel_setup.dump()").stream("stdout")
    cell = json.loads(next(t for t in out.splitlines() if t.startswith("OTEL-DUMP ")).removeprefix("OTEL-DUMP "))
    execution = next(s for s in cell["spans"] if s["name"] == "pyrepl3.execution" and s["attributes"]["pyrepl3.msg_id"] == ran.msg_id)
    rpc = next(s for s in cell["spans"] if s["name"] == "pyrepl3.rpc")
    assert rpc["parent"] == execution["span_id"] and rpc["trace_id"] == execution["trace_id"]
    assert rpc["attributes"]["pyrepl3.group"] == workers.group

    def remote() -> dict[str, Any] | None:
        if not dump_file.exists():
            return None
        data = json.loads(dump_file.read_text())
        return data if any(s["name"] == "pyrepl3.rpc.run" for s in data["spans"]) else None

    data = wait_for(remote, 30, what="the worker's pyrepl3.rpc.run span")
    run = next(s for s in data["spans"] if s["name"] == "pyrepl3.rpc.run")
    assert run["trace_id"] == rpc["trace_id"] and run["parent"] == rpc["span_id"], (run, rpc)
    assert run["attributes"]["pyrepl3.promise_id"] == rpc["attributes"]["pyrepl3.promise_id"]
    queue = data["metrics"]["pyrepl3.rpc.queue"]
    assert queue[0]["count"] == 1 and queue[0]["attributes"] == {"pyrepl3.group": workers.group} and queue[0]["sum"] >= 0
