"""Interrupts that land while the kernel is creating a cell's promise."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from harness import TIMEOUT, KernelFactory, executions

def _wait_idle(kernel, msg_id: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kernel.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting until the deadline
            continue
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["header"]["msg_type"] == "status"
            and msg["content"]["execution_state"] == "idle"
        ):
            return
    raise AssertionError(f"kernel never went idle after {msg_id}")


def test_interrupt_right_after_submit_never_leaves_a_promise_pending(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start("interrupt-race")
    kernel.ok("1")
    sent = []
    # Interrupt at a spread of delays after sending, so that some land in the
    # few milliseconds the kernel spends creating exec:<msg_id> and receiving it back.
    for delay in itertools.islice(itertools.cycle([0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006, 0.01]), 24):
        msg_id = kernel.send_execute("x = 1")
        time.sleep(delay)
        kernel.km.interrupt_kernel()
        _wait_idle(kernel, msg_id)
        sent.append(msg_id)
        time.sleep(0.05)
    # A SIGINT can land while the kernel's main thread is writing a shell reply,
    # truncating that one message (stock ipykernel has the same window); the
    # client then rejects it as badly signed. Drain such leftovers first.
    while True:
        try:
            kernel.kc.get_shell_msg(timeout=0.5)
        except ValueError:
            continue
        except Exception:  # noqa: BLE001 - queue.Empty: drained
            break
    # The kernel is still usable...
    assert kernel.ok("print('alive')").stream("stdout") == "alive\n"
    # ...and every cell that got a promise has settled it (ran, or was interrupted).
    ids = {f"exec:{m}" for m in sent}
    deadline = time.monotonic() + 5
    while True:
        rows = executions(home, kernel.session)
        still_pending = sorted(e for e, r in rows.items() if e in ids and r["state"] == "pending")
        if not still_pending or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert still_pending == [], f"{len(still_pending)} interrupted cell(s) left pending"
    # Re-sending an interrupted request answers promptly (replay, or a run).
    for msg_id in sent[:3]:
        run = kernel.execute("x = 1", msg_id=msg_id, timeout=10)
        assert run.content["status"] in ("ok", "error")
