"""``pyrepl3 export``: the outputs the store holds go back into the notebook file, by cell id.

Real kernels run cells sent with JupyterLab's ``metadata.cellId``; one of them
is sent by a client that then goes away without reading a single reply (a page
closed during a long cell). The exported file must hold what each cell's latest
execution produced, and be a valid notebook.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import nbformat
import pytest
from harness import PYREPL3_CLI, SCRUBBED, Kernel, KernelFactory, Store, cli, cli_json, executions, wait_for


def _cell_id(name: str) -> str:
    """Unique per test, so a database shared by several tests cannot match another test's cells."""
    return f"{name}-{uuid.uuid4().hex[:12]}"


def _notebook(path: Path, cells: list[Any]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nbformat.validate(nb)
    nbformat.write(nb, path)


def _code(cell_id: str, source: str, outputs: list[Any] | None = None) -> Any:
    cell = nbformat.v4.new_code_cell(source, id=cell_id)
    cell.outputs = outputs or []
    return cell


def _read(path: Path) -> Any:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def _settled(home: Path, session: str, msg_id: str) -> bool:
    row = executions(home, session).get(f"exec:{msg_id}")
    return row is not None and row["state"] != "pending"


@pytest.mark.engines("embedded", "postgres")
def test_export_fills_latest_outputs_by_cell_id_including_a_cell_nobody_read(
    kernel: Kernel, home: Path, store: Store, tmp_path: Path
) -> None:
    ids = {n: _cell_id(n) for n in ("stream", "display", "result", "error", "unread", "never")}
    kernel.ok("print('first run')", cell_id=ids["stream"])
    display = kernel.ok("from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))", cell_id=ids["display"])
    result = kernel.ok("6 * 7", cell_id=ids["result"])
    failed = kernel.execute("raise ValueError('boom')", cell_id=ids["error"])
    assert failed.content["status"] == "error"
    latest = kernel.ok("print('second run')", cell_id=ids["stream"])  # the same cell again: this one counts

    # A page closed during a long cell: the request is sent, then the only
    # client goes away before a reply or an output was read.
    unread_code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.3)\n'finished'"
    unread = kernel.send_execute(unread_code, cell_id=ids["unread"])
    kernel.kc.stop_channels()
    wait_for(lambda: _settled(home, kernel.session, unread), what="the unread cell to settle in the store")

    path = tmp_path / "analysis.ipynb"
    stale = nbformat.v4.new_output("stream", name="stdout", text="stale\n")
    kept = nbformat.v4.new_output("stream", name="stdout", text="kept as it was\n")
    _notebook(path, [
        nbformat.v4.new_markdown_cell("# Title", id=_cell_id("md")),
        _code(ids["stream"], "print('second run')", [stale]),
        _code(ids["display"], "display(...)"),
        _code(ids["result"], "6 * 7"),
        _code(ids["error"], "raise ValueError('boom')"),
        _code(ids["unread"], unread_code),
        _code(ids["never"], "print('never ran')", [kept]),
    ])
    md_before = nbformat.read(path, as_version=4).cells[0]

    report = cli_json(home, "export", str(path))
    assert report["session"] == kernel.session
    assert report["output"] == str(path)
    assert [c["index"] for c in report["filled"]] == [1, 2, 3, 4, 5]
    assert report["missing"] == [6] and report["running"] == [] and report["other_sessions"] == []
    by_index = {c["index"]: c for c in report["filled"]}
    assert by_index[1]["execution"] == f"exec:{latest.msg_id}" and by_index[4]["state"] == "rejected"
    assert by_index[2]["source_changed"] and not by_index[3]["source_changed"]

    nb = _read(path)
    assert nb.cells[0] == md_before
    stream, shown, res, err, tick, never = nb.cells[1:]
    assert [(o.output_type, o.name, o.text) for o in stream.outputs] == [("stream", "stdout", "second run\n")]
    assert stream.execution_count == latest.content["execution_count"]
    assert [o.output_type for o in shown.outputs] == ["display_data"]
    assert shown.outputs[0].data["text/html"] == "<b>bold</b>"
    assert shown.execution_count == display.content["execution_count"]
    [value] = res.outputs
    count = result.content["execution_count"]
    assert (value.output_type, value.data["text/plain"], value.execution_count, res.execution_count) == ("execute_result", "42", count, count)
    [error] = err.outputs
    assert (error.output_type, error.ename, error.evalue) == ("error", "ValueError", "boom")
    assert err.execution_count == failed.content["execution_count"]
    assert "".join(o.text for o in tick.outputs if o.output_type == "stream") == "tick 0\ntick 1\ntick 2\n"
    assert tick.outputs[-1].output_type == "execute_result" and tick.outputs[-1].data["text/plain"] == "'finished'"
    assert tick.execution_count == tick.outputs[-1].execution_count == latest.content["execution_count"] + 1
    assert never.outputs == [kept] and never.execution_count is None

    text = cli(home, "export", str(path)).stdout
    assert text == f"pyrepl3 export: 5 cells filled from session {store.session(kernel.session)}, 1 without stored outputs; wrote {path}\n"


def test_output_leaves_the_notebook_untouched(kernel: Kernel, home: Path, tmp_path: Path) -> None:
    cell = _cell_id("c")
    kernel.ok("print('hi')", cell_id=cell)
    path, out = tmp_path / "nb.ipynb", tmp_path / "sub" / "out.ipynb"
    out.parent.mkdir()
    _notebook(path, [_code(cell, "print('hi')")])
    before = path.read_bytes()
    report = cli_json(home, "export", str(path), "--output", str(out), "--session", kernel.session)
    assert report["output"] == str(out) and len(report["filled"]) == 1
    assert path.read_bytes() == before
    assert _read(out).cells[0].outputs[0].text == "hi\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.ipynb"]  # no temporary file left behind


def test_unknown_cell_ids_exit_2_and_say_how_to_pass_a_session(kernel: Kernel, home: Path, tmp_path: Path) -> None:
    kernel.ok("x = 1", cell_id=_cell_id("stored"))
    path = tmp_path / "other.ipynb"
    _notebook(path, [_code(_cell_id("unknown"), "x = 1"), _code(_cell_id("unknown"), "x")])
    before = path.read_bytes()

    found = cli(home, "export", str(path), check=False)
    assert found.returncode == 2, found
    assert found.stdout == ""
    assert "no session in this store has executions of the 2 code cells of" in found.stderr
    assert "--session S" in found.stderr and "pyrepl3 sessions" in found.stderr

    given = cli(home, "export", str(path), "--session", kernel.session, check=False)
    assert given.returncode == 2, given
    assert "has no settled execution of a code cell" in given.stderr and "Nothing written" in given.stderr
    assert path.read_bytes() == before


def test_several_sessions_take_the_most_recent_and_say_which(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    cell = _cell_id("shared")
    older = kernels.start(session="older")
    older.ok("print('from older')", cell_id=cell)
    older.close()
    newer = kernels.start(session="newer")
    newer.ok("print('from newer')", cell_id=cell)
    path = tmp_path / "nb.ipynb"
    _notebook(path, [_code(cell, "print(...)")])

    done = cli(home, "export", str(path))
    assert "took newer (the most recently active), not older; choose one with --session" in done.stderr
    assert "from session newer" in done.stdout
    assert _read(path).cells[0].outputs[0].text == "from newer\n"
    assert cli_json(home, "export", str(path), "--session", "older")["session"] == "older"
    assert _read(path).cells[0].outputs[0].text == "from older\n"


def test_export_of_a_pyrepl3_run_session(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.ipynb"
    _notebook(path, [
        nbformat.v4.new_markdown_cell("notes"),
        nbformat.v4.new_code_cell("print('ran headless')"),
        nbformat.v4.new_code_cell("21 * 2"),
    ])
    before = path.read_bytes()
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    ran = subprocess.run(
        [str(PYREPL3_CLI), "--home", str(home), "run", str(path), "--output", str(tmp_path / "ran.ipynb")],
        capture_output=True, text=True, env=env, timeout=180, stdin=subprocess.DEVNULL,
    )
    assert ran.returncode == 0, ran.stderr
    assert path.read_bytes() == before  # the run wrote elsewhere: the notebook itself has no outputs

    report = cli_json(home, "export", str(path))
    assert report["session"] == f"run:{path.resolve()}"
    assert [c["index"] for c in report["filled"]] == [1, 2]
    nb, executed = _read(path), _read(tmp_path / "ran.ipynb")
    assert [c.outputs for c in nb.cells[1:]] == [c.outputs for c in executed.cells[1:]]
    assert nb.cells[1].outputs[0].text == "ran headless\n"
    assert nb.cells[2].outputs[0].data["text/plain"] == "42"
    assert [c.execution_count for c in nb.cells[1:]] == [1, 2]
