"""A drop-in for ipykernel: what its frontends see of PyREPL3 is what they see of ipykernel.

The kernel's identity, control-channel executions, and the kernel's own log
(which must never become a cell output: ipykernel forwards the process's file
descriptor 2 into the running cell).
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import IPython
import pytest
from harness import TIMEOUT, Kernel, KernelFactory, kernel_env, wait_for

import kernel as pyrepl3


def _kernel_info(k: Kernel) -> dict[str, Any]:
    msg_id = k.kc.kernel_info()
    while True:
        reply = k.kc.get_shell_msg(timeout=TIMEOUT)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def test_kernel_info_is_ipythons_with_pyrepl3_added(kernels: KernelFactory) -> None:
    info = _kernel_info(kernels.start())
    assert info["implementation"] == "ipython", "frontends and ipykernel's message spec key on it"
    assert info["implementation_version"] == IPython.__version__
    assert info["language_info"]["name"] == "python"
    assert info["pyrepl3"] == {"version": pyrepl3.__version__}
    assert "PyREPL3" in info["banner"] and "IPython" in info["banner"]


def _control_execute(k: Kernel, code: str) -> dict[str, Any]:
    msg = k.kc.session.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                                "user_expressions": {}, "allow_stdin": False})
    k.kc.control_channel.send(msg)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            reply = k.kc.control_channel.get_msg(timeout=1)
        except queue.Empty:
            continue
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            return reply
    raise AssertionError(f"no control reply to {code!r} within {TIMEOUT:g}s")


def test_a_control_channel_execute_runs_its_own_code(kernels: KernelFactory, tmp_path: Path) -> None:
    k = kernels.start()
    marks = tmp_path / "marks.txt"
    k.ok(f"open({str(marks)!r}, 'a').write('shell\\n')\nx = 'from shell'")
    for n in (1, 2):
        reply = _control_execute(k, f"open({str(marks)!r}, 'a').write('control {n}\\n')\nx = 'from control {n}'")
        assert reply["content"]["status"] == "ok", reply["content"]
    assert marks.read_text() == "shell\ncontrol 1\ncontrol 2\n", "the previous shell cell is not replayed"
    assert k.ok("print(x)").stream("stdout") == "from control 2\n"


@pytest.mark.parametrize("debug", ["1", "0"], ids=["PYREPL3_DEBUG=1", "default"])
def test_the_kernel_log_never_reaches_a_cell(kernels: KernelFactory, home: Path, tmp_path: Path, debug: str) -> None:
    """With fd 2 forwarded into cells (as under jupyter_server, outside pytest),
    PyREPL3's log lines go to the kernel process's own stderr, never a cell; and
    by default informational notices are not logged at all: a kernel whose
    promises hold is as quiet there as ipykernel (nbclient checks that)."""
    log = tmp_path / "kernel.log"
    env = kernel_env(home, "logs", PYREPL3_DEBUG=debug)
    env.pop("PYTEST_CURRENT_TEST", None)  # else ipykernel does not forward fd 2 into cells
    k = kernels.start(env=env, log=log)
    runs = [
        k.ok("import os\nos.write(2, b'fd 2 reaches the cell\\n')"),
        k.ok("import threading\nlk = threading.Lock()"),  # a skipped name: an INFO notice
        k.ok("%durable"),
        k.ok("print('done')"),
    ]
    assert "not saved in the checkpoint: lk" in runs[2].stream("stdout")
    assert "fd 2 reaches the cell" in runs[0].stream("stderr"), "fd 2 is forwarded: this test can fail"
    shown = [str(m["content"]) for run in runs for m in run.iopub]
    assert not any("[PyREPL3]" in text for text in shown), shown
    assert all(run.stream("stderr") == "" for run in runs[1:]), [run.stream("stderr") for run in runs]
    if debug == "1":
        wait_for(lambda: "not saved in the checkpoint: lk" in log.read_text(), what="the notice in the kernel log")
        assert "[PyREPL3] INFO" in log.read_text()
    else:
        k.close()  # the log is complete once the process is gone
        assert "[PyREPL3]" not in log.read_text(), log.read_text()
