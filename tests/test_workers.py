"""``pyrepl3 worker`` (issue 13, the worker side): real Postgres, real worker processes, real signals.

Calls are sent as a cell's ``durable.rpc`` sends them (tests/remote_tasks.py: a sealed call in a task
promise of the group), and awaited by polling the promise with a deadline. Each worker runs in its own
HOME, Jupyter data dir and working directory, with the same PYREPL3_KEY.
"""

from __future__ import annotations

import base64
import json
import math
import pickle
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from resonate.retry import Constant

from harness import Store
from remote_tasks import RemoteTasks, WorkerProcess

pytestmark = [pytest.mark.engines("postgres"), pytest.mark.timeout(240)]

KEY = "worker-test-key-" + uuid.uuid4().hex


class Fleet:
    """Worker processes of one test (killed at its end) and a client sending them calls."""

    def __init__(self, root: Path, store: Store) -> None:
        self.root = root
        self.dsn = store.dsn
        self.group = f"g{uuid.uuid4().hex[:10]}"
        self.workers: list[WorkerProcess] = []
        self.tasks = RemoteTasks(store.dsn, KEY)

    def start(self, name: str, **options: Any) -> WorkerProcess:
        w = WorkerProcess(self.root, self.dsn, KEY, group=self.group, name=name, **options)
        self.workers.append(w)
        return w.ready()

    def send(self, fn: Any, *args: Any, **options: Any) -> str:
        return self.tasks.send(fn, *args, group=self.group, **options)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.tasks.close()


@pytest.fixture
def fleet(tmp_path: Path, store: Store) -> Iterator[Fleet]:
    f = Fleet(tmp_path, store)
    yield f
    f.close()


def wait_path(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout:g}s"
        time.sleep(0.05)


def blocking(gate: Path, starts: Path) -> Any:
    """A function (sent by value) that notes each start, then waits for ``gate`` to exist."""

    def wait_for_gate(x: int) -> int:
        import time as _time
        from pathlib import Path as _Path

        with open(starts, "a") as f:
            f.write("start\n")
        while not _Path(gate).exists():
            _time.sleep(0.02)
        return x * 2

    return wait_for_gate


def stored(dsn: str, pid: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        promise = conn.execute("SELECT state, settled_at FROM resonate.promises WHERE id = %s", (pid,)).fetchall()
        task = conn.execute("SELECT state, version FROM resonate.tasks WHERE id = %s", (pid,)).fetchall()
        attempts = conn.execute(
            "SELECT id, state FROM resonate.promises WHERE id LIKE %s ORDER BY id", (pid + ":attempt:%",)
        ).fetchall()
    return {"promise": promise, "task": task, "attempts": attempts}


# -- calls run, and what comes back verifies -----------------------------------------------------


def test_calls_by_reference_and_by_value_run_and_their_sealed_results_verify(fleet: Fleet) -> None:
    w = fleet.start("w1")
    scale = 7
    by_ref = fleet.send(math.factorial, 20)
    by_value = fleet.send(lambda x, k=1: x * scale + k, 5, k=2)
    failing = fleet.send(lambda: 1 / 0)
    unsendable = fleet.send(lambda: __import__("threading").Lock())  # a result that cannot travel back
    tasks = fleet.tasks
    ref = tasks.wait(by_ref)
    assert ref.state == "resolved" and tasks.result(ref) == math.factorial(20)
    body = tasks.body(ref)  # verified with the session key, for this promise id
    assert body["worker"] == "w1" and body["attempts"] == 1 and body["started_at"] <= time.time()
    val = tasks.wait(by_value)
    assert tasks.result(val) == 37
    bad = tasks.wait(failing)
    assert bad.state == "rejected"
    with pytest.raises(Exception) as info:
        tasks.result(bad)
    assert info.value.ename == "ZeroDivisionError" and info.value.attempts == 1 and "on worker w1" in str(info.value)
    tb = info.value.remote_traceback  # from the function down: none of the worker's own frames
    assert "in <lambda>" in tb and "ZeroDivisionError" in tb and "worker_calls.py" not in tb and "attempts.py" not in tb
    with pytest.raises(Exception, match="cannot be serialized") as info:
        tasks.result(tasks.wait(unsendable))
    assert info.value.attempts == 1
    # The result verifies for its own promise only.
    with pytest.raises(Exception, match="signature|signed"):
        tasks.sealer.unseal(by_value, ref.value.data, "the result of a remote call")
    assert sorted(line.split()[2] for line in w.lines("done")) == sorted([by_ref, by_value])  # run side by side
    assert "math.factorial attempt 1" in w.output()


# -- refusals ------------------------------------------------------------------------------------


def planted_pickle(marker: Path) -> str:
    """A pickle that creates ``marker`` when it is loaded."""

    class Plant:
        def __reduce__(self) -> Any:
            return (open, (str(marker), "w"))

    return base64.b64encode(pickle.dumps(Plant())).decode()


def test_unsigned_and_tampered_calls_are_refused_and_never_unpickled(fleet: Fleet, tmp_path: Path) -> None:
    w = fleet.start("w1")
    tasks = fleet.tasks
    marker = tmp_path / "planted-pickle-ran"
    body = {
        "format": 1, "session": tasks.session, "function": "os.system", "code": {"pickle": planted_pickle(marker)},
        "arguments": {"json": [[], {}]}, "retries": {"kind": "never"}, "timeout": None, "trace": {},
    }
    unsigned = fleet.send(None, sealed=body)
    # A call signed with the key, then changed: its code swapped for the planted pickle.
    pid = tasks.next_id()
    genuine = tasks.sealer.seal(pid, {**body, "code": {"ref": "math:factorial"}, "arguments": {"json": [[3], {}]}})
    tampered = fleet.send(None, promise_id=pid, sealed={**genuine, "code": body["code"]})
    # A genuine call moved to another promise id (a replay of someone else's call).
    moved = fleet.send(None, sealed=genuine)
    # Signed with another key.
    other = RemoteTasks(fleet.dsn, "another-key", session=tasks.session)
    try:
        foreign = other.send(math.factorial, 3, group=fleet.group)
    finally:
        other.close()
    malformed = fleet.send(None, sealed="not a call")
    refused = [unsigned, tampered, moved, foreign, malformed]
    for pid in refused:
        record = tasks.wait(pid)
        assert record.state == "rejected", (pid, record.state)
        message = record.value.data["message"]
        assert message.startswith("refused by worker w1: "), message
    assert "not signed" in tasks.wait(unsigned).value.data["message"]
    assert not marker.exists()
    assert sorted(line.split()[2] for line in w.lines("refused")) == sorted(refused)
    assert w.lines("start") == [] and "refused" in w.err.read_text()  # logged as errors too
    # Never retried: each refused promise was delivered once and has no attempt records.
    for pid in refused:
        assert stored(fleet.dsn, pid)["attempts"] == []
    # The worker goes on working.
    ok = fleet.send(math.factorial, 5)
    assert tasks.result(tasks.wait(ok)) == 120


# -- retries -------------------------------------------------------------------------------------


def flaky(counter: Path, fail_times: int) -> Any:
    def fails_then_succeeds() -> int:
        with open(counter, "a") as f:
            f.write("x")
        n = len(open(counter).read())
        if n <= fail_times:
            raise RuntimeError(f"attempt {n} failed")
        return n

    return fails_then_succeeds


def test_retries_are_journaled_and_the_count_goes_into_the_result(fleet: Fleet, tmp_path: Path) -> None:
    w = fleet.start("w1")
    tasks = fleet.tasks
    ok = fleet.send(flaky(tmp_path / "ok", 2), retries=Constant(delay=0, max_retries=3))
    exhausted = fleet.send(flaky(tmp_path / "never", 99), retries=Constant(delay=0, max_retries=2))
    record = tasks.wait(ok)
    assert tasks.result(record) == 3 and tasks.body(record)["attempts"] == 3
    journal = stored(fleet.dsn, ok)["attempts"]
    assert journal == [(f"{ok}:attempt:1", "rejected"), (f"{ok}:attempt:2", "rejected")]
    first = tasks.get(f"{ok}:attempt:1")
    assert first is not None
    failure = tasks.sealer.unseal(first.id, first.value.data, "an attempt record")  # sealed for its own id
    assert failure["ename"] == "RuntimeError" and failure["evalue"] == "attempt 1 failed"
    bad = tasks.wait(exhausted)
    with pytest.raises(Exception) as info:
        tasks.result(bad)
    assert info.value.attempts == 3 and info.value.evalue == "attempt 3 failed"
    assert "(after 3 attempts)" in str(info.value)
    assert [line.split()[-1] for line in w.lines("start") if ok in line] == ["1", "2", "3"]


# -- worker death --------------------------------------------------------------------------------


def test_a_worker_that_takes_a_task_over_goes_on_with_its_attempt_count(fleet: Fleet, tmp_path: Path) -> None:
    lease, counter = 2.0, tmp_path / "count"
    a = fleet.start("wa", lease=lease)
    pid = fleet.send(flaky(counter, 1), retries=Constant(delay=8, max_retries=3))
    wait_path(counter)
    first = f"{pid}:attempt:1"
    deadline = time.monotonic() + 30
    while fleet.tasks.get(first) is None:  # attempt 1 failed and is journaled; attempt 2 is due 8 s later
        assert time.monotonic() < deadline, "attempt 1 was not journaled"
        time.sleep(0.05)
    b = fleet.start("wb", lease=lease)
    a.kill()  # between attempts
    record = fleet.tasks.wait(pid, timeout=60)
    assert fleet.tasks.result(record) == 2
    body = fleet.tasks.body(record)
    assert body["worker"] == "wb" and body["attempts"] == 2
    assert [line.split()[-1] for line in b.lines("start")] == ["2"]  # not a fresh count
    assert len(counter.read_text()) == 2 and stored(fleet.dsn, pid)["attempts"] == [(first, "rejected")]



def test_a_worker_killed_mid_task_its_task_finishes_on_another_after_the_lease(fleet: Fleet, tmp_path: Path) -> None:
    lease = 2.0
    gate, starts = tmp_path / "gate", tmp_path / "starts"
    a = fleet.start("wa", lease=lease)
    pid = fleet.send(blocking(gate, starts), 21)
    a.wait_output(f"start    {pid}")
    b = fleet.start("wb", lease=lease)
    killed = time.monotonic()
    a.kill()  # SIGKILL, mid-task
    gate.touch()
    record = fleet.tasks.wait(pid, timeout=60)
    took = time.monotonic() - killed
    assert record.state == "resolved" and fleet.tasks.result(record) == 42
    assert fleet.tasks.body(record)["worker"] == "wb"
    # Settled exactly once: one promise, its task fulfilled, one result; the function ran twice
    # (once on each worker): remote calls run at least once.
    row = stored(fleet.dsn, pid)
    assert row["promise"][0][0] == "resolved" and len(row["promise"]) == 1 and row["task"][0][0] == "fulfilled"
    assert [line.split()[2] for line in b.lines("done")] == [pid] and a.lines("done") == []
    assert starts.read_text().count("start") == 2
    print(f"\nSIGKILL of a worker mid-task -> its task finished on another: {took:.2f}s (lease {lease:g}s)")


def test_a_call_longer_than_the_lease_keeps_its_lease_and_runs_once(fleet: Fleet, tmp_path: Path) -> None:
    lease, gate, starts = 1.0, tmp_path / "gate", tmp_path / "starts"
    a = fleet.start("wa", lease=lease)
    pid = fleet.send(blocking(gate, starts), 3)
    a.wait_output(f"start    {pid}")
    b = fleet.start("wb", lease=lease)
    until = time.monotonic() + 4 * lease  # the call runs four leases long, watched all along: never re-delivered
    while time.monotonic() < until:
        assert b.lines("start") == [] and starts.read_text().count("start") == 1
        time.sleep(0.1)
    gate.touch()
    record = fleet.tasks.wait(pid)
    assert fleet.tasks.result(record) == 6 and fleet.tasks.body(record)["worker"] == "wa"
    assert starts.read_text().count("start") == 1 and b.lines("start") == []


def test_a_calls_timeout_rejects_it_between_attempts_and_while_it_runs(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start("w1")
    tasks = fleet.tasks
    # Attempt 1 fails; attempt 2 would be due after the timeout: the worker rejects the call at once.
    retrying = fleet.send(flaky(tmp_path / "count", 5), retries=Constant(delay=30, max_retries=3), timeout=20)
    record = tasks.wait(retrying, timeout=15)
    with pytest.raises(Exception) as info:
        tasks.result(record)
    assert info.value.ename == "RuntimeError" and len((tmp_path / "count").read_text()) == 1
    # An attempt still running at the deadline: the engine times the promise out (workers pump its timers).
    gate, starts = tmp_path / "gate", tmp_path / "starts"
    slow = fleet.send(blocking(gate, starts), 1, timeout=2)
    record = tasks.wait(slow, timeout=30)
    gate.touch()
    assert record.state == "rejected_timedout"


# -- stopping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_lets_the_running_call_finish_and_exits_0(fleet: Fleet, tmp_path: Path, sig: int) -> None:
    gate, starts = tmp_path / "gate", tmp_path / "starts"
    w = fleet.start("w1", grace=30)
    pid = fleet.send(blocking(gate, starts), 4)
    w.wait_output(f"start    {pid}")
    w.signal(sig)
    w.wait_output("worker w1 stopping: 1 call(s) running")
    later = fleet.send(math.factorial, 4)  # sent while it stops: not taken
    gate.touch()
    assert w.wait(60) == 0
    assert fleet.tasks.result(fleet.tasks.wait(pid)) == 8
    assert "1 call(s) finished (1 while stopping), 0 given back" in w.output()
    assert fleet.tasks.get(later).state == "pending"
    other = fleet.start("w2")
    assert fleet.tasks.result(fleet.tasks.wait(later)) == 24 and other.lines("done")


def test_sigterm_past_the_grace_gives_the_call_back_to_the_group_at_once(fleet: Fleet, tmp_path: Path) -> None:
    gate, starts = tmp_path / "gate", tmp_path / "starts"
    lease = 60.0  # far longer than the test: the task must come back by being given back, not by the lease
    a = fleet.start("wa", grace=0.5, lease=lease)
    pid = fleet.send(blocking(gate, starts), 5)
    a.wait_output(f"start    {pid}")
    b = fleet.start("wb", lease=lease)
    a.signal(signal.SIGTERM)
    assert a.wait(30) == 0
    assert f"0 call(s) finished (0 while stopping), 1 given back ({pid})" in a.output()
    gate.touch()
    t0 = time.monotonic()
    record = fleet.tasks.wait(pid, timeout=30)
    assert fleet.tasks.result(record) == 10 and fleet.tasks.body(record)["worker"] == "wb"
    assert time.monotonic() - t0 < lease and b.lines("done")


# -- refusing to start ---------------------------------------------------------------------------


def run_worker(tmp_path: Path, *argv: str, key: str | None = KEY, home_key: bytes | None = None, mode: int = 0o600) -> subprocess.CompletedProcess[str]:
    home = tmp_path / f"home-{uuid.uuid4().hex[:6]}"
    data = home / "jupyter"
    (data / "pyrepl3").mkdir(parents=True)
    if home_key is not None:
        path = data / "pyrepl3" / "key"
        path.write_bytes(home_key)
        path.chmod(mode)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYREPL3_")}
    env.update(HOME=str(home), JUPYTER_DATA_DIR=str(data))
    if key is not None:
        env["PYREPL3_KEY"] = key
    return subprocess.run([sys.executable, "-m", "kernel.cli.main", "worker", *argv], cwd=home, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == "", done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def test_a_bad_store_key_group_or_option_is_a_clear_error_with_exit_status_2(tmp_path: Path, store: Store) -> None:
    group = ["--group", "g1"]
    secret = "s3cr3t-pw"
    unreachable = run_worker(tmp_path, "--store", f"postgresql://alice:{secret}@127.0.0.1:9/db", *group)
    assert_refused(unreachable, "unreachable", "postgresql://alice:***@127.0.0.1:9/db")
    assert secret not in unreachable.stderr
    assert_refused(run_worker(tmp_path, "--store", "mysql://x/y", *group), "mysql")
    assert_refused(run_worker(tmp_path, "--store", str(tmp_path / "local-store"), *group), "--store=", "embedded", "PYREPL3_STORE")
    assert_refused(run_worker(tmp_path, *group), "PYREPL3_STORE is empty", "embedded")
    assert not (tmp_path / "local-store").exists()
    pg = ["--store", store.dsn, *group]
    assert_refused(run_worker(tmp_path, *pg, key=None), "no signing key", "PYREPL3_KEY")
    assert_refused(run_worker(tmp_path, *pg, key="   "), "no signing key", "PYREPL3_KEY")
    assert_refused(run_worker(tmp_path, *pg, key=None, home_key=b"k" * 32, mode=0o644), "readable by others", "chmod 600")
    assert_refused(run_worker(tmp_path, *pg, key=None, home_key=b"  \n"), "is empty")
    for bad in ("bad group!", "pyrepl3-abc", ""):
        assert_refused(run_worker(tmp_path, "--store", store.dsn, "--group", bad), "worker group")
    assert_refused(run_worker(tmp_path, *pg, "--concurrency", "0"), "--concurrency 0")
    assert_refused(run_worker(tmp_path, *pg, "--lease", "0"), "--lease 0")
    assert KEY not in json.dumps([unreachable.stderr])
