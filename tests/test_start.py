"""Kernel start: kernel_info is answered at once, even while a namespace is being
restored; the first execution waits for the restore and sees every value; the
embedded path does not import what only other engines or the CLI use.

(How fast the start is, against ipykernel, is measured in benchmarks/bench_start.py.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from harness import TIMEOUT, KernelFactory, wait_for

#: A value whose unpickling (in the restoring kernel) blocks until the test opens
#: a gate: the restore is slow for real, for as long as the test needs. Capturing
#: it is quick; only an unpickling after ``armed`` exists waits.
SLOW_VALUE = """
import os, time
def rebuilt(state, armed, started, gate, done):
    if os.path.exists(armed):
        open(started, "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        open(done, "w").close()
    return SlowToRestore(state)
class SlowToRestore:
    def __init__(self, state):
        self.state = state
    def __reduce__(self):
        return (rebuilt, (self.state, {armed!r}, {started!r}, {gate!r}, {done!r}))
slow = SlowToRestore("the state")
numbers = list(range(1000))
"""


def kernel_info(kernel: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Send kernel_info_request; return its reply."""
    return kernel.next_for("shell", kernel.kc.kernel_info(), time.monotonic() + timeout, "kernel_info_reply")


def test_kernel_info_is_answered_while_a_slow_restore_runs(kernels: KernelFactory, tmp_path: Path) -> None:
    marks = {name: tmp_path / name for name in ("armed", "started", "gate", "done")}
    first = kernels.start(session="slow-restore")
    first.ok(SLOW_VALUE.format(**{k: str(v) for k, v in marks.items()}))
    first.ok("numbers.append(1000)")
    first.kill9()
    marks["armed"].touch()

    again = kernels.start(session="slow-restore")  # returns once kernel_info has been answered
    wait_for(marks["started"].exists, what="the restore reaching the slow value")
    assert not marks["done"].exists()
    reply = kernel_info(again)  # answered again, the restore still blocked at the gate
    assert reply["content"]["status"] == "ok"
    assert not marks["done"].exists()

    msg_id = again.send_execute(
        "print(os.path.exists(%r), slow.state, type(slow).__name__, numbers[-1], len(numbers))" % str(marks["done"])
    )
    marks["gate"].touch()
    run = again.collect(msg_id)
    assert run.content["status"] == "ok", run.content
    # The cell ran after the restore had finished, in the restored namespace, numbered after it.
    assert run.stream("stdout") == "True the state SlowToRestore 1000 1001\n"
    assert run.content["execution_count"] == 3


def test_complete_waits_for_the_restore(kernels: KernelFactory, tmp_path: Path) -> None:
    marks = {name: tmp_path / name for name in ("armed", "started", "gate", "done")}
    first = kernels.start(session="slow-complete")
    first.ok(SLOW_VALUE.format(**{k: str(v) for k, v in marks.items()}))
    first.kill9()
    marks["armed"].touch()

    again = kernels.start(session="slow-complete")
    wait_for(marks["started"].exists, what="the restore reaching the slow value")
    msg_id = again.kc.complete("slo", 3)  # `slow` is in the namespace only once its unpickling is done
    marks["gate"].touch()
    deadline = time.monotonic() + TIMEOUT
    while True:
        msg = again.kc.get_shell_msg(timeout=max(deadline - time.monotonic(), 0.01))
        if msg["parent_header"].get("msg_id") == msg_id:
            break
    assert "slow" in msg["content"]["matches"], msg["content"]
    assert marks["done"].exists()


def test_embedded_kernel_does_not_import_other_engines_or_cli_modules(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="imports")
    run = kernel.ok(
        "import sys, json\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aiohttp', 'psycopg', 'psycopg_pool', 'resonate_pg', 'rich', 'nbformat', 'nbclient'))))"
    )
    # "aiohttp" itself is there, but as a module whose code has not run (see kernel/__init__.py).
    assert json.loads(run.stream("stdout")) == ["aiohttp"]
    assert kernel.ok("print(type(sys.modules['aiohttp']).__name__)").stream("stdout") == "_RunOnFirstUse\n"
