"""The example notebooks run cleanly on pyrepl3, and every code cell is recorded."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from harness import TIMEOUT, executions, kernel_env
from nbclient import NotebookClient

#: remote_workers.ipynb needs Postgres and two workers: tests/test_remote_calls.py runs it.
NOTEBOOKS = sorted(p for p in (Path(__file__).parent.parent / "notebooks").glob("*.ipynb") if p.stem != "remote_workers")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_example_notebook_runs(path: Path, tmp_path: Path, home: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.kernelspec.name == "pyrepl3"
    session = f"example-{path.stem}"
    client = NotebookClient(nb, timeout=TIMEOUT, startup_timeout=TIMEOUT, resources={"metadata": {"path": str(tmp_path)}})
    # Headless, as the notebooks say to run them: an input() waits for an out-of-band answer.
    env = kernel_env(home, session, PYREPL3_HEADLESS_INPUT="wait")
    client.execute(env=env)  # only cells tagged raises-exception may fail

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    rows = executions(home, session)
    assert sorted(r["code"] for r in rows.values()) == sorted(c.source for c in code_cells)
    for cell in code_cells:
        [row] = [r for r in rows.values() if r["execution_count"] == cell.execution_count]
        failing = "raises-exception" in cell.metadata.get("tags", [])
        assert row["state"] == ("rejected" if failing else "resolved"), row
        assert not any("durability is off" in o.get("text", "") for o in cell.outputs)
