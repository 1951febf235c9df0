"""Durable steps inside cells and resuming executions a killed kernel left unfinished."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import KERNEL_NAME, KernelFactory, kernel_env, show, wait_for
from jupyter_client.manager import KernelManager


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _five_steps(calls: Path, gate: Path) -> str:
    """A cell with five durable steps that stalls after the third until ``gate`` exists."""
    return f"""
import os, time
def step(i):
    with open({str(calls)!r}, 'a') as f:
        f.write(f'{{i}}\\n')
    return i * 10
total = 0
for i in range(5):
    total += durable.run(step, i)
    if i == 2:
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.05)
print('total', total)
"""


def test_kill_during_steps_then_resume(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    calls, gate = tmp_path / "calls.txt", tmp_path / "gate"
    kernel = kernels.start(session="steps")
    msg_id = kernel.send_execute(_five_steps(calls, gate))
    wait_for(lambda: len(_calls(calls)) == 3, what="three finished steps")
    for n in (1, 2, 3):
        wait_for(lambda n=n: show(home, f"exec:{msg_id}:step:{n}")["state"] == "resolved", what=f"step {n} journaled")
    kernel.kill9()
    gate.touch()

    fresh = kernels.start(session="steps")
    run = fresh.ok("%durable resume", timeout=60)
    assert f"exec:{msg_id}" in run.stream("stdout") and "resumed and completed" in run.stream("stdout")
    assert "total 100" in run.stream("stdout")
    assert _calls(calls) == ["0", "1", "2", "3", "4"]  # steps 0-2 were replayed, not repeated
    record = show(home, f"exec:{msg_id}")
    assert record["state"] == "resolved"
    assert any("total 100" in o.get("text", "") for o in record["value"]["outputs"])


def test_without_resume_the_interrupted_execution_is_rejected(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    calls, gate = tmp_path / "calls.txt", tmp_path / "gate"
    kernel = kernels.start(session="moved-on")
    msg_id = kernel.send_execute(_five_steps(calls, gate))
    wait_for(lambda: len(_calls(calls)) == 3, what="three finished steps")
    kernel.kill9()
    fresh = kernels.start(session="moved-on")
    run = fresh.ok("1 + 1")
    assert run.stream("stderr") == "", "the crash was seen where it happened: the next cell looks as under ipykernel"
    assert "interrupted by kernel exit" in fresh.ok("%durable").stream("stdout")
    record = show(home, f"exec:{msg_id}")
    assert record["state"] == "rejected"
    assert record["error"]["ename"] == "KernelExitInterruption"
    assert "interrupted by kernel exit" in record["error"]["evalue"]


def test_auto_resume_and_its_limit(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    """A cell that kills its kernel every time is resumed at most PYREPL3_RESUME_LIMIT times."""
    runs = tmp_path / "runs.txt"
    env = kernel_env(home, "crash-loop", PYREPL3_AUTO_RESUME="1", PYREPL3_RESUME_LIMIT="2")
    crasher = f"open({str(runs)!r}, 'a').write('run\\n')\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)"
    kernel = kernels.start(env=env)
    msg_id = kernel.send_execute(crasher)
    wait_for(lambda: not kernel.km.is_alive(), what="the kernel to kill itself")
    for attempt in (1, 2):
        # Auto-resume re-runs the cell as the kernel starts, which kills it again
        # (possibly before it ever answers kernel_info): no client waits on it.
        km = KernelManager(kernel_name=KERNEL_NAME)
        km.start_kernel(env=env)
        try:
            wait_for(lambda: len(_calls(runs)) == attempt + 1, what=f"resume attempt {attempt}")
            wait_for(lambda: not km.is_alive(), what="the resumed cell to kill the kernel")
        finally:
            km.cleanup_resources()
    last = kernels.start(env=env)
    last.ok("pass")
    record = wait_for(lambda: (r := show(home, f"exec:{msg_id}"))["state"] == "rejected" and r, what="rejection")
    assert "PYREPL3_RESUME_LIMIT=2" in record["error"]["evalue"]
    assert len(_calls(runs)) == 3  # the first run and two resumes, no more


def test_durable_sleep_and_named_checkpoints(kernels: KernelFactory) -> None:
    kernel = kernels.start()
    run = kernel.ok(
        "import time\n"
        "t = time.time(); durable.sleep(0.3); slept = time.time() - t\n"
        "for i in range(5):\n"
        "    durable.checkpoint('progress', i)\n"
        "print(slept >= 0.3, durable.get_checkpoint('progress'), durable.get_checkpoint('nothing', 'dflt'))"
    )
    assert run.stream("stdout") == "True 4 dflt\n"


def test_unserializable_step_result_fails_at_the_call(kernels: KernelFactory) -> None:
    kernel = kernels.start()
    run = kernel.execute("import threading\nlock = durable.run(threading.Lock)")
    assert run.content["ename"] == "StepError"
    assert "cannot be serialized" in run.content["evalue"] and "lock" in run.content["evalue"]


@pytest.mark.engines("embedded", "postgres")
def test_newest_step_value_after_many_versions_and_after_a_resume(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    """300 versions of one name, the newest read back as it goes; killed, resumed in a new
    kernel, which reads the newest of the first run and writes 300 more after it."""
    ready, gate = tmp_path / "ready", tmp_path / "gate"
    cell = f"""
import os, time
start = durable.get_checkpoint('n', -1) + 1
for i in range(start, start + 300):
    durable.checkpoint('n', i)
    durable.checkpoint('other', -i)
    if i % 50 == 0:
        assert durable.get_checkpoint('n') == i, (i, durable.get_checkpoint('n'))
open({str(ready)!r}, 'a').write(f'{{start}}\\n')
while not os.path.exists({str(gate)!r}):
    time.sleep(0.05)
print('newest', durable.get_checkpoint('n'), durable.get_checkpoint('other'), 'start', start)
"""
    kernel = kernels.start(session="versions")
    msg_id = kernel.send_execute(cell)
    wait_for(lambda: ready.exists() and ready.read_text() == "0\n", timeout=120, what="300 versions written")
    kernel.kill9()
    gate.touch()
    fresh = kernels.start(session="versions")
    run = fresh.ok("%durable resume", timeout=120)
    assert "newest 599 -599 start 300" in run.stream("stdout"), run.stream("stdout")
    assert ready.read_text() == "0\n300\n"
    for n, value in ((300, 299), (301, 300), (600, 599)):
        record = show(home, f"exec:{msg_id}:ckpt:n:{n}")
        assert record["state"] == "resolved" and record["value"]["json"] == value, record
