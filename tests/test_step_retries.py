"""``durable.run(fn, ..., retries=, timeout=)``: attempts journaled, resumed after kill -9, bounded, interruptible.

Real kernels on both engines; every attempt of the function under test writes a
marker file (``<dir>/<n>``, n = 1 for the first run) before it fails, so the
markers say exactly which attempts ran, in which process's lifetime. The first
part counts the journal's trips with the in-memory runtime of
tests/test_steps_unit.py (no timing).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from resonate.retry import Constant

from harness import KernelFactory, cli, show, wait_for
from kernel.checkpoint.signing import Sealer, SignatureError, Signer
from kernel.core.clock import Clock
from kernel.core.errors import ConfigurationError
from kernel.core.ids import attempt_id
from kernel.durable.attempts import AttemptsExhausted
from kernel.durable.steps import StepError, StepJournal
from test_steps_unit import FakeRuntime

pytestmark = pytest.mark.engines("embedded", "postgres")

# -- the journal's trips (in memory) ------------------------------------------------


class _Sleeps:
    def __init__(self) -> None:
        self.now, self.slept = 1000.0, []

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.now, monotonic=lambda: self.now, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _journal(sleeps: _Sleeps) -> StepJournal:
    return StepJournal(FakeRuntime(), Sealer(Signer(b"k"), "s"), clock=sleeps.clock())  # type: ignore[arg-type]


def _failing(calls: list[int], until: int) -> Any:
    def flaky() -> int:
        calls.append(len(calls) + 1)
        if len(calls) < until:
            raise ConnectionError(f"try {len(calls)}")
        return len(calls)

    return flaky


def test_each_failed_attempt_is_one_sealed_write_and_a_resume_goes_on_from_the_journal() -> None:
    sleeps = _Sleeps()
    journal = _journal(sleeps)
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    calls: list[int] = []
    policy = Constant(max_retries=5, delay=3)
    with journal.executing("exec:a", fresh=True):
        assert journal.run(_failing(calls, 3), retries=policy, timeout=100) == 3
    # Nothing read (a fresh execution), two failures and the step: one write each.
    assert rt.trips == ["create_settled"] * 3 and calls == [1, 2, 3] and sleeps.slept == [3, 3]
    first = rt.promises[attempt_id("exec:a:step:1", 1)]
    assert first.state == "rejected" and first.value.data["ename"] == "ConnectionError" and "signature" in first.value.data
    assert first.value.data["deadline"] == 1100.0 and rt.promises["exec:a:step:1"].state == "resolved"

    # A kernel that died in the backoff after attempt 2: the resumed run reads the journal
    # (only for that step), waits the rest of the delay, runs attempt 3 under the same deadline.
    rt.promises.pop("exec:a:step:1")
    rt.promises.pop(attempt_id("exec:a:step:1", 2))
    rt.promises[attempt_id("exec:a:step:1", 2)] = type(first)(
        "rejected", type(first.value)(journal.sealer.seal(attempt_id("exec:a:step:1", 2), {
            "ename": "ConnectionError", "evalue": "try 2", "deadline": 1100.0, "retry_at": sleeps.now + 2,
        })), first.param,
    )
    rt.trips.clear()
    sleeps.slept.clear()
    resumed: list[int] = [1, 2]
    with journal.executing("exec:a"):
        assert journal.run(_failing(resumed, 3), retries=policy, timeout=100) == 3
        assert journal.run(lambda: 5) == 5  # past the unfinished step: no look-up, one write
    assert resumed == [1, 2, 3] and sleeps.slept == [2]
    assert rt.trips == ["find"] + ["find"] * 3 + ["create_settled"] * 2  # the step, attempts 1, 2 and the missing 3


def test_the_final_error_is_the_last_attempts_with_the_count_and_a_replay_names_it() -> None:
    sleeps = _Sleeps()
    journal = _journal(sleeps)
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    calls: list[int] = []
    with journal.executing("exec:b", fresh=True), pytest.raises(ConnectionError, match="try 3") as info:
        journal.run(_failing(calls, 99), retries=Constant(max_retries=2, delay=0))
    assert "durable.run(" in info.value.__notes__[0] and "failed after 3 attempts" in info.value.__notes__[0]
    step = rt.promises["exec:b:step:1"]
    assert step.state == "rejected" and step.value.data == {"error": "ConnectionError: try 3", "attempts": 3}
    assert [attempt_id("exec:b:step:1", k) in rt.promises for k in (1, 2, 3, 4)] == [True, True, True, False]
    with journal.executing("exec:b"), pytest.raises(StepError, match="after 3 attempts: ConnectionError: try 3"):
        journal.run(_failing(calls, 99), retries=Constant(max_retries=2, delay=0))
    assert calls == [1, 2, 3]  # a finished step never runs again


def test_a_resume_after_the_last_attempt_or_past_the_deadline_runs_nothing_and_raises_the_journaled_error() -> None:
    sleeps = _Sleeps()
    journal = _journal(sleeps)
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    calls: list[int] = []
    with journal.executing("exec:e", fresh=True), pytest.raises(ConnectionError):
        journal.run(_failing(calls, 99), retries=Constant(max_retries=2, delay=0))
    rt.promises.pop("exec:e:step:1")  # died after journaling the last attempt, before storing the step
    with journal.executing("exec:e"), pytest.raises(ConnectionError) as info:
        journal.run(_failing(calls, 99), retries=Constant(max_retries=2, delay=0))
    assert str(info.value) == "try 3" and calls == [1, 2, 3] and "failed after 3 attempts" in info.value.__notes__[0] and "earlier process" in info.value.__notes__[0]
    assert rt.promises["exec:e:step:1"].value.data == {"error": "ConnectionError: try 3", "attempts": 3}

    def killed_at_2() -> None:  # as if the kernel died in attempt 2: nothing of it is journaled
        calls.append(0)
        if len(calls) == 2:
            raise KeyboardInterrupt
        raise LookupError("down")

    calls.clear()
    with journal.executing("exec:f", fresh=True), pytest.raises(KeyboardInterrupt):
        journal.run(killed_at_2, retries=Constant(max_retries=5, delay=10), timeout=100)
    sleeps.now += 500  # the kernel stayed down past the deadline
    with journal.executing("exec:f"), pytest.raises(LookupError) as info:
        journal.run(killed_at_2, retries=Constant(max_retries=5, delay=10), timeout=100)
    assert str(info.value) == "down" and len(calls) == 2 and "failed after 1 attempt (its timeout of 100 s passed)" in info.value.__notes__[0]

    class Custom(Exception):
        pass

    def custom() -> None:
        raise Custom("mine")

    with journal.executing("exec:g", fresh=True), pytest.raises(Custom):
        journal.run(custom, retries=Constant(max_retries=1, delay=0))
    rt.promises.pop("exec:g:step:1")
    with journal.executing("exec:g"), pytest.raises(AttemptsExhausted, match="after 2 attempts.*: Custom: mine"):
        journal.run(custom, retries=Constant(max_retries=1, delay=0))


def test_bad_options_are_refused_before_anything_is_stored_or_numbered() -> None:
    journal = _journal(_Sleeps())
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    with journal.executing("exec:c", fresh=True):
        for bad in ({"retries": -1}, {"retries": "3"}, {"retries": True}, {"timeout": 0}, {"timeout": "5"},
                    {"timeout": float("nan")}, {"timeout": True}):
            with pytest.raises(ConfigurationError):
                journal.run(lambda: 1, **bad)
        assert journal.run(lambda: 1) == 1
    assert rt.trips == ["create_settled"] and list(rt.promises) == ["exec:c:step:1"]


def test_a_tampered_attempt_record_is_refused() -> None:
    journal = _journal(_Sleeps())
    rt: FakeRuntime = journal.runtime  # type: ignore[assignment]
    with journal.executing("exec:d", fresh=True), pytest.raises(ConnectionError):
        journal.run(_failing([], 99), retries=Constant(max_retries=1, delay=0))
    rt.promises.pop("exec:d:step:1")
    record = rt.promises[attempt_id("exec:d:step:1", 1)]
    record.value.data = {**record.value.data, "retry_at": 0}  # an earlier next attempt than was journaled
    with journal.executing("exec:d"), pytest.raises(SignatureError):
        journal.run(lambda: 1, retries=Constant(max_retries=1, delay=0))


# -- real kernels --------------------------------------------------------------------

FLAKY = """
import os, time
from resonate.retry import Constant
def flaky(path, succeed_at, hang=0):
    n = len(os.listdir(path)) + 1
    with open(os.path.join(path, str(n)), 'w') as f:
        f.write(repr(time.time()))
    time.sleep(hang)
    if n < succeed_at:
        raise ConnectionError(f'try {n}')
    return n
"""


def _markers(path: Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir())


def _found(home: Path, pid: str) -> dict[str, Any] | None:
    proc = cli(home, "show", pid, "--json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _sigalrm_left_alone(kernel: Any) -> None:
    out = kernel.ok("import signal\nprint(signal.getsignal(signal.SIGALRM) is signal.SIG_DFL, signal.getitimer(signal.ITIMER_REAL))")
    assert out.stream("stdout") == "True (0.0, 0.0)\n"


def test_kill9_between_attempts_then_resume_goes_on_with_the_count(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    kernel = kernels.start(session="retry-kill")
    msg_id = kernel.send_execute(FLAKY + f"""
try:
    durable.run(flaky, {str(marks)!r}, 99, retries=Constant(max_retries=2, delay=8), timeout=600)
except ConnectionError as e:
    print('FINAL', type(e).__name__, e, '|', *e.__notes__)
""")
    step = f"exec:{msg_id}:step:1"
    wait_for(lambda: _markers(marks) == [1, 2] and _found(home, attempt_id(step, 2)), timeout=60, what="attempt 2 journaled")
    kernel.kill9()  # in the 8 s backoff after attempt 2
    killed_at = time.time()
    assert _markers(marks) == [1, 2], "the kill was meant to land in the backoff"
    unfinished = show(home, step)
    assert unfinished["state"] == "unfinished" and unfinished["session"] == "retry-kill" and [a["evalue"] for a in unfinished["attempts"]] == ["try 1", "try 2"]

    fresh = kernels.start(session="retry-kill")
    run = fresh.ok("%durable resume", timeout=90)
    out = run.stream("stdout")
    assert "FINAL ConnectionError try 3 | durable.run(flaky) failed after 3 attempts (Constant(max_retries=2, delay=8))" in out
    assert _markers(marks) == [1, 2, 3]  # the count went on: attempts 1 and 2 were not run again
    journal = [show(home, attempt_id(step, k)) for k in (1, 2, 3)]
    assert _found(home, attempt_id(step, 4)) is None
    assert [(r["kind"], r["state"], r["value"]["evalue"]) for r in journal] == [("attempt", "rejected", f"try {k}") for k in (1, 2, 3)]
    assert len({r["value"]["deadline"] for r in journal}) == 1  # the same deadline across the kill
    third_ran = float((marks / "3").read_text())
    assert third_ran >= journal[1]["value"]["retry_at"] - 0.01  # only after the rest of the delay
    assert third_ran >= killed_at  # by the resumed kernel
    finished = show(home, step)
    assert finished["state"] == "rejected" and finished["value"]["attempts"] == 3 and len(finished["attempts"]) == 3
    assert finished["value"]["error"] == "ConnectionError: try 3"
    assert "attempt:" in cli(home, "show", step).stdout


def test_exhausted_retries_int_retries_and_refused_options(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    marks, other = tmp_path / "marks", tmp_path / "other"
    marks.mkdir()
    other.mkdir()
    kernel = kernels.start(session="retry-exhaust")
    kernel.ok(FLAKY)
    run = kernel.execute(f"durable.run(flaky, {str(marks)!r}, 99, retries=Constant(max_retries=2, delay=0))")
    assert run.content["status"] == "error" and run.content["ename"] == "ConnectionError" and run.content["evalue"] == "try 3"
    assert "failed after 3 attempts" in "\n".join(run.content["traceback"])
    step = show(home, f"exec:{run.msg_id}:step:1")
    assert step["state"] == "rejected" and step["value"] == {"error": "ConnectionError: try 3", "attempts": 3}
    assert [a["evalue"] for a in step["attempts"]] == ["try 1", "try 2", "try 3"] and _markers(marks) == [1, 2, 3]

    refused = kernel.ok(f"""
for kw in (dict(retries=-1), dict(retries='3'), dict(retries=2.5), dict(timeout=0), dict(timeout='5'), dict(timeout=-1)):
    try:
        durable.run(flaky, {str(marks)!r}, 1, **kw)
    except Exception as e:
        print('REFUSED', type(e).__name__)
print('STEP', durable.run(len, 'abc'))
""")
    assert refused.stream("stdout") == "REFUSED ConfigurationError\n" * 6 + "STEP 3\n"
    assert _markers(marks) == [1, 2, 3] and show(home, f"exec:{refused.msg_id}:step:1")["state"] == "resolved"
    assert _found(home, f"exec:{refused.msg_id}:step:2") is None  # nothing stored for the refused calls

    passed = kernel.ok(f"""
import functools
def own(*, retries, timeout):
    return [retries, timeout]
print('INT', durable.run(flaky, {str(other)!r}, 2, retries=1))
print('OWN', durable.run(functools.partial(own, retries='mine', timeout=7)))
""", timeout=60)
    assert passed.stream("stdout") == "INT 2\nOWN ['mine', 7]\n" and _markers(other) == [1, 2]


def test_a_timeout_stops_a_hanging_attempt_and_leaves_signals_alone(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    kernel = kernels.start(session="retry-timeout")
    kernel.ok(FLAKY)
    run = kernel.execute("durable.run(time.sleep, 120, timeout=1)", timeout=60)
    assert run.content["ename"] == "TimeoutError" and "timeout of 1 s passed during the attempt" in run.content["evalue"]
    _sigalrm_left_alone(kernel)

    run = kernel.execute(f"durable.run(flaky, {str(marks)!r}, 99, hang=120, retries=Constant(max_retries=5, delay=0), timeout=2)", timeout=60)
    assert run.content["ename"] == "TimeoutError"
    assert "failed after 1 attempt (its timeout of 2 s passed)" in "\n".join(run.content["traceback"])
    assert _markers(marks) == [1]
    assert show(home, f"exec:{run.msg_id}:step:1")["value"]["attempts"] == 1
    _sigalrm_left_alone(kernel)

    gate = tmp_path / "sleeping"  # SIGINT still interrupts a cell as before
    msg_id = kernel.send_execute(f"open({str(gate)!r}, 'w').close()\ntime.sleep(120)")
    wait_for(gate.exists, what="the sleeping cell")
    kernel.km.interrupt_kernel()
    assert kernel.collect(msg_id).content["ename"] == "KeyboardInterrupt"
    assert kernel.ok("print('alive')").stream("stdout") == "alive\n"


def test_sigint_in_a_backoff_or_an_attempt_stops_the_step_at_once(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    backoff, attempt = tmp_path / "backoff", tmp_path / "attempt"
    backoff.mkdir()
    attempt.mkdir()
    kernel = kernels.start(session="retry-sigint")
    kernel.ok(FLAKY)
    msg_id = kernel.send_execute(f"durable.run(flaky, {str(backoff)!r}, 99, retries=Constant(max_retries=5, delay=600))")
    step = f"exec:{msg_id}:step:1"
    wait_for(lambda: _found(home, attempt_id(step, 1)), timeout=60, what="attempt 1 journaled")
    kernel.km.interrupt_kernel()
    run = kernel.collect(msg_id)  # well before the 600 s delay ends
    assert run.content["ename"] == "KeyboardInterrupt"

    msg_id = kernel.send_execute(f"durable.run(flaky, {str(attempt)!r}, 99, hang=600, retries=Constant(max_retries=5, delay=0), timeout=900)")
    wait_for(lambda: _markers(attempt) == [1], what="attempt 1 running")
    kernel.km.interrupt_kernel()
    assert kernel.collect(msg_id).content["ename"] == "KeyboardInterrupt"
    _sigalrm_left_alone(kernel)
    assert _markers(backoff) == [1] and _markers(attempt) == [1]  # nothing retried after the interrupt
    assert _found(home, attempt_id(f"exec:{msg_id}:step:1", 1)) is None  # an interrupt is not a failed attempt
    assert show(home, step)["state"] == "unfinished"


@pytest.mark.timeout(60, method="thread")  # pytest-timeout's own SIGALRM timer would make the attempt leave it alone
def test_a_deadline_that_passes_inside_a_wait_on_the_engine_is_put_off_until_the_wait_ends() -> None:
    import signal

    from resonate.retry import Never

    from kernel.core.interrupts import Interrupts
    from kernel.durable.attempts import Attempts, NoJournal

    interrupts = Interrupts(signal.SIGUSR2)  # a span of its own, SIGINT untouched
    waited: list[float] = []

    def attempt() -> None:
        span = interrupts.hold(redeliver=True, what="a wait on the durable engine")
        start = time.monotonic()
        try:
            while time.monotonic() - start < 0.6:  # the deadline (0.2 s) passes in here
                time.sleep(0.01)
            waited.append(time.monotonic() - start)
        finally:
            interrupts.release(span)
        time.sleep(30)  # where the put-off expiry lands

    with pytest.raises(TimeoutError, match="during the attempt"):
        Attempts(Never(), what="durable.run(attempt)", timeout=0.2, interrupts=interrupts).run(attempt, NoJournal())
    assert len(waited) == 1 and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
