"""Unit tests (pure logic) for remote calls' envelope, retry policies and attempts."""

from __future__ import annotations

import base64
import json
import os
import pickle

import pytest
from resonate.retry import Constant, Exponential, Linear, Never

from kernel.checkpoint.signing import Sealer, SignatureError, Signer
from kernel.core.clock import Clock
from kernel.core.errors import ConfigurationError
from kernel.core.ids import attempt_id, kind_of, rpc_id
from kernel.core.retries import policy_from_json, policy_json, retry_policy
from kernel.durable.attempts import Attempts, AttemptsExhausted, NoJournal
from kernel.durable.calls import (
    RemoteCallError,
    open_call,
    open_failure,
    open_result,
    seal_call,
    seal_failure,
    seal_result,
)

KEY, OTHER = Signer(b"k" * 32), Signer(b"o" * 32)
PID = rpc_id("exec:m1", 1)


def test_ids_and_kinds():
    assert PID == "exec:m1:rpc:1" and kind_of(PID) == "rpc"
    assert kind_of(attempt_id(PID, 2)) == "attempt" and kind_of(attempt_id("exec:m1:step:3", 1)) == "attempt"


def test_call_round_trip_by_reference_and_by_value():
    sealer = Sealer(KEY, "s1")
    sealed = seal_call(sealer, PID, os.path.join, ("a", "b"), {}, retries=Never(), timeout=5.0)
    assert sealed["code"] == {"ref": "posixpath:join"}
    call = open_call(KEY, PID, json.loads(json.dumps(sealed)))
    assert call.fn is os.path.join and call.fn(*call.args) == "a/b" and call.session == "s1" and call.timeout == 5.0

    offset = 3
    sealed = seal_call(sealer, PID, lambda x, *, y: x + y + offset, (1,), {"y": 2}, retries=Constant(max_retries=2, delay=0), timeout=None)
    assert "pickle" in sealed["code"]
    call = open_call(KEY, PID, json.loads(json.dumps(sealed)))
    assert call.fn(*call.args, **call.kwargs) == 6 and call.retries == Constant(max_retries=2, delay=0)


class _Planted:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_unsigned_tampered_moved_or_foreign_calls_are_refused_before_unpickling(tmp_path):
    marker = tmp_path / "planted"
    sealer = Sealer(KEY, "s1")
    good = seal_call(sealer, PID, lambda: 1, (), {}, retries=Never(), timeout=None)
    planted = {**good, "code": {"pickle": base64.b64encode(pickle.dumps(_Planted(str(marker)))).decode()}}
    unsigned = {k: v for k, v in planted.items() if k not in ("signature", "sealed")}
    for data in (planted, unsigned):
        with pytest.raises(SignatureError):
            open_call(KEY, PID, data)
    with pytest.raises(SignatureError):  # copied to another promise
        open_call(KEY, rpc_id("exec:m1", 2), good)
    with pytest.raises(SignatureError):  # another key
        open_call(OTHER, PID, good)
    with pytest.raises(SignatureError):  # the session swapped
        open_call(KEY, PID, {**good, "session": "s2"})
    assert not marker.exists()


def test_unknown_module_is_named():
    sealer = Sealer(KEY, "s1")
    sealed = seal_call(sealer, PID, os.path.join, (), {}, retries=Never(), timeout=None)
    body = {k: v for k, v in sealed.items() if k not in ("signature", "sealed")}
    body["code"] = {"ref": "no_such_module_xyz:f"}
    with pytest.raises(RemoteCallError, match="no_such_module_xyz"):
        open_call(KEY, PID, sealer.seal(PID, body))


def test_results_and_failures_are_sealed_for_their_promise():
    sealer = Sealer(KEY, "s1")
    sealed = seal_result(sealer, PID, {"x": [1, 2]}, started_at=1.0, attempts=1, worker="w1")
    assert open_result(sealer, PID, sealed) == {"x": [1, 2]}
    with pytest.raises(SignatureError):
        open_result(sealer, rpc_id("exec:m1", 2), sealed)
    with pytest.raises(SignatureError):
        open_result(sealer, PID, {**sealed, "result": {"json": 3}})
    failure = seal_failure(sealer, PID, {"ename": "ValueError", "evalue": "bad", "traceback": []}, started_at=1.0, attempts=3, worker="w1")
    stored = {"__type": "error", "message": str(failure)}
    opened = open_failure(sealer, PID, stored)
    assert opened.ename == "ValueError" and opened.attempts == 3 and "after 3 attempts" in str(opened)
    with pytest.raises(SignatureError):
        open_failure(Sealer(OTHER, "s1"), PID, stored)


def test_retry_policies():
    assert retry_policy(None) == Never() and retry_policy(0) == Never()
    assert retry_policy(3) == Exponential(delay=1, factor=2, max_retries=3, max_delay=60)
    lin = Linear(max_retries=2, delay=1)
    assert retry_policy(lin) is lin and policy_from_json(policy_json(lin)) == lin
    for bad in (-1, True, "3", 1.5, object()):
        with pytest.raises(ConfigurationError, match="retries="):
            retry_policy(bad)
    for bad in ({"kind": "forever"}, {"kind": "constant", "max_retries": -1, "delay": 0}, {"kind": "linear", "max_retries": "2", "delay": 1}, [1]):
        with pytest.raises(ConfigurationError):
            policy_from_json(bad)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.now, monotonic=lambda: self.now, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ListJournal:
    def __init__(self, failures=None) -> None:
        self.records = list(failures or [])

    def failures(self):
        return list(self.records)

    def record_failure(self, attempt, failure):
        assert attempt == len(self.records) + 1
        self.records.append(failure)


def test_attempts_back_off_journal_and_name_the_count():
    fake = FakeClock()
    calls = []

    def flaky():
        calls.append(fake.now)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    journal = ListJournal()
    attempts = Attempts(Exponential(delay=1, factor=2, max_retries=5, max_delay=60), what="durable.run(flaky)", clock=fake.clock(), preempt=False)
    assert attempts.run(flaky, journal) == "ok" and attempts.attempts == 3
    assert fake.slept == [2, 4] and len(journal.records) == 2 and journal.records[0]["ename"] == "ConnectionError"

    def always():
        raise ValueError("nope")

    attempts = Attempts(Constant(max_retries=2, delay=1), what="durable.run(always)", clock=fake.clock(), preempt=False)
    with pytest.raises(ValueError, match="nope") as info:
        attempts.run(always, ListJournal())
    assert attempts.attempts == 3 and "failed after 3 attempts" in "".join(info.value.__notes__)


def test_attempts_resume_from_the_journal_and_keep_the_deadline():
    fake = FakeClock()
    policy = Constant(max_retries=3, delay=10)
    earlier = [{"ename": "E", "evalue": "1", "deadline": fake.now + 100, "retry_at": fake.now + 4}]
    attempts = Attempts(policy, what="x", timeout=100, clock=fake.clock(), preempt=False)
    assert attempts.run(lambda: 7, ListJournal(earlier)) == 7
    assert attempts.attempts == 2 and fake.slept == [4]  # the second attempt, after only the rest of the delay

    exhausted = [{"ename": "E", "evalue": str(n)} for n in range(4)]
    with pytest.raises(AttemptsExhausted, match="after 4 attempts.*E: 3"):
        Attempts(policy, what="x", clock=fake.clock(), preempt=False).run(lambda: 7, ListJournal(exhausted))

    def slow_fail():
        fake.now += 30
        raise OSError("down")

    attempts = Attempts(Constant(max_retries=10, delay=10), what="x", timeout=100, clock=fake.clock(), preempt=False)
    with pytest.raises(OSError) as info:
        attempts.run(slow_fail, ListJournal())
    assert attempts.attempts == 3 and "timeout of 100 s passed" in "".join(info.value.__notes__)


@pytest.mark.timeout(60, method="thread")  # pytest-timeout's own SIGALRM timer would make the attempt leave it alone
def test_an_attempt_on_the_main_thread_is_stopped_at_the_deadline():
    import time

    attempts = Attempts(Never(), what="durable.run(hang)", timeout=0.2)
    with pytest.raises(TimeoutError, match="timeout of 0.2 s"):
        attempts.run(lambda: time.sleep(30), NoJournal())


def test_worker_groups():
    from kernel.core.ids import worker_group

    assert worker_group("gpu") == "gpu" and worker_group("batch.v2_a-1") == "batch.v2_a-1"
    for bad in ("", "-x", "a b", "a:b", "x" * 65, "pyrepl3-abc", None):
        with pytest.raises(ConfigurationError, match="worker group"):
            worker_group(bad)
