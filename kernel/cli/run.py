"""``pyrepl3 run``: execute a notebook headless, resumably.

The run is a durable session named after the notebook's path, and every code
cell is sent with a msg_id derived from the run and from the sources of that
cell and every cell before it. Running the same command again therefore sends
the same msg_ids: cells that finished are answered from the store (their
outputs replayed, nothing executed), the cell a dead kernel was running is
resumed under its own ``exec:<msg_id>``, and the rest run normally. Editing a
cell changes its msg_id and those of every cell after it, so they run again.
The namespace comes back through the kernel's own checkpoint restore.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from kernel.cli.render import RunProgress

KERNEL_NAME = "pyrepl3"


def run_session(path: Path) -> str:
    return f"run:{path.resolve()}"


def cell_msg_ids(nb: Any, session: str) -> dict[int, str]:
    """Deterministic msg_ids for the code cells: a hash chain over their sources."""
    chain = hashlib.sha256(session.encode()).hexdigest()
    ids = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        chain = hashlib.sha256(f"{chain}\0{cell.get('id', '')}\0{cell.source}".encode()).hexdigest()
        ids[index] = f"run-{chain[:32]}"
    return ids


class ResumableRun(NotebookClient):
    """nbclient with deterministic msg_ids per code cell."""

    def __init__(self, nb: Any, msg_ids: dict[int, str], progress: RunProgress, **kw: Any) -> None:
        super().__init__(nb, **kw)
        self.msg_ids = msg_ids
        self.progress = progress
        self._next_msg_id: str | None = None
        self.on_cell_execute = self._before_cell
        self.on_cell_executed = self._after_cell

    def _before_cell(self, cell: Any, cell_index: int) -> None:
        self._next_msg_id = self.msg_ids[cell_index]

    def _after_cell(self, cell: Any, cell_index: int, execute_reply: Any) -> None:
        status = (execute_reply or {}).get("content", {}).get("status", "?")
        self.progress.update(cell_index, status)

    async def async_start_new_kernel_client(self) -> Any:
        kc = await super().async_start_new_kernel_client()
        run = self

        def execute(code: str, silent: bool = False, store_history: bool = True,
                    user_expressions: dict[str, Any] | None = None, allow_stdin: bool | None = None,
                    stop_on_error: bool = True) -> str:
            content = {
                "code": code,
                "silent": silent,
                "store_history": store_history,
                "user_expressions": user_expressions or {},
                "allow_stdin": False,
                "stop_on_error": stop_on_error,
            }
            msg = kc.session.msg("execute_request", content)
            if run._next_msg_id is not None:
                msg["header"]["msg_id"] = run._next_msg_id
                run._next_msg_id = None
            kc.shell_channel.send(msg)
            return msg["header"]["msg_id"]

        kc.execute = execute
        return kc


def run_notebook(path: Path, output: Path | None = None, *, timeout: float | None = None, env: dict[str, str] | None = None) -> int:
    """Execute ``path``; write outputs to ``output`` (default: the notebook itself).

    Returns the exit status: 0 when every cell ran, 1 when a cell raised or the
    kernel died (the report says which cell and how to continue).
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    session = run_session(path)
    msg_ids = cell_msg_ids(nb, session)
    progress = RunProgress(len(msg_ids))
    # The kernel's own notices go to its log, which reaches this terminal, not
    # into the cells: outputs stay the cells' own. An input() waits for an answer
    # out of band (`pyrepl3 answer`), since a run has no stdin (unless
    # PYREPL3_HEADLESS_INPUT says otherwise).
    kernel_env = {
        "PYREPL3_HEADLESS_INPUT": "wait",
        **os.environ,
        **(env or {}),
        "PYREPL3_SESSION": session,
        "PYREPL3_NOTICES": "log",
    }
    client = ResumableRun(
        nb,
        msg_ids,
        progress,
        kernel_name=KERNEL_NAME,
        timeout=timeout,
        startup_timeout=120,
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )
    status = 0
    progress.start()
    try:
        client.execute(env=kernel_env)
    except CellExecutionError as exc:
        status = 1
        index = _failed_cell(nb)
        print(f"\npyrepl3 run: exception in cell {index + 1 if index is not None else '?'} of {path}:\n{_short(exc)}", file=sys.stderr)
    except DeadKernelError as exc:
        status = 1
        print(
            f"\npyrepl3 run: the kernel died while running {path} ({exc}).\n"
            "Run the same command again to continue: finished cells are not executed again.",
            file=sys.stderr,
        )
    finally:
        progress.close()
        target = output or path
        nbformat.write(nb, target)
        print(f"pyrepl3 run: wrote {target}", file=sys.stderr)
    return status


def _failed_cell(nb: Any) -> int | None:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return index
    return None


def _short(exc: CellExecutionError) -> str:
    ename, evalue = getattr(exc, "ename", ""), getattr(exc, "evalue", "")
    return f"{ename}: {evalue}" if ename else str(exc).strip().splitlines()[-1]
