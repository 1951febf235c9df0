"""A headless ``jupyter console --kernel pyrepl3`` session, driven like a user."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
from harness import BIN, TIMEOUT, executions, kernel_env


def test_jupyter_console_evaluates_and_records(tmp_path: Path, home: Path) -> None:
    env = kernel_env(home, "console-session", TERM="dumb")
    child = pexpect.spawn(
        str(BIN / "jupyter"),
        ["console", "--kernel", "pyrepl3", "--simple-prompt"],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(40, 200),
    )
    log = tmp_path / "console.log"
    with log.open("w") as child.logfile_read:
        try:
            child.expect(r"In \[1\]: ")
            child.sendline("6*7")
            child.expect(r"Out\[1\]: 42")
            child.expect(r"In \[2\]: ")
            child.sendline("exit")
            child.expect(pexpect.EOF)
        except pexpect.ExceptionPexpect:
            child.logfile_read.flush()
            print(log.read_text(), file=sys.stderr)
            raise
        finally:
            child.close(force=True)
    assert child.exitstatus == 0, log.read_text()

    # `exit` is itself sent to the kernel (it answers with an exit payload).
    rows = sorted(executions(home, "console-session").values(), key=lambda r: r["execution_count"])
    assert [(r["code"], r["state"]) for r in rows] == [("6*7", "resolved"), ("exit", "resolved")]
