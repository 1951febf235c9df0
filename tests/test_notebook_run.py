"""``pyrepl3 run``: a notebook killed half way continues where it stopped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nbformat
from harness import PYREPL3_CLI, SCRUBBED

CELLS = 6


def _notebook(path: Path, side: Path, crash_flag: Path | None, second_cell: str = "b = a + 1") -> None:
    """Six cells; each appends its number to ``side``; cell 3 kills its kernel once."""
    sources = [
        "a = 1\nprint('a is', a)",
        second_cell,
        "import os, signal\nc = b * 10",
        "d = c + 1\nd",
        "from IPython.display import display, Markdown\ndisplay(Markdown(f'**{d}**'))",
        "print('done', a, b, c, d)",
    ]
    cells = []
    for n, src in enumerate(sources, start=1):
        lines = [f"open({str(side)!r}, 'a').write('{n}\\n')"]
        if n == 3 and crash_flag is not None:
            lines.append(
                f"import os, signal\nif not os.path.exists({str(crash_flag)!r}):\n"
                f"    open({str(crash_flag)!r}, 'w').close()\n    os.kill(os.getpid(), signal.SIGKILL)"
            )
        cells.append(nbformat.v4.new_code_cell("\n".join([*lines, src])))
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nbformat.write(nb, path)


def _run(home: Path, notebook: Path, output: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    return subprocess.run(
        [str(PYREPL3_CLI), "--home", str(home), "run", str(notebook), "--output", str(output)],
        capture_output=True, text=True, env=env, timeout=180, stdin=subprocess.DEVNULL,
    )


def _outputs(path: Path) -> list[list[dict]]:
    nb = nbformat.read(path, as_version=4)
    return [[{k: v for k, v in o.items() if k != "execution_count"} for o in c.outputs] for c in nb.cells]


def _lines(path: Path) -> list[str]:
    return path.read_text().split()


def test_killed_run_continues_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    # The reference: the same notebook without the crash.
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    _notebook(ref_dir / "nb.ipynb", ref_dir / "side.txt", None)
    done = _run(ref_dir / "home", ref_dir / "nb.ipynb", ref_dir / "out.ipynb")
    assert done.returncode == 0, done.stderr

    work = tmp_path / "work"
    work.mkdir()
    nb, side, flag, out = work / "nb.ipynb", work / "side.txt", work / "crashed", work / "out.ipynb"
    _notebook(nb, side, flag)
    first = _run(work / "home", nb, out)
    assert first.returncode == 1
    assert "kernel died" in first.stderr and "Run the same command again" in first.stderr
    assert _lines(side) == ["1", "2", "3"]

    second = _run(work / "home", nb, out)
    assert second.returncode == 0, second.stderr
    assert "6/6 cells" in second.stderr  # the progress bar
    # Cells 1-2 were filled in from the store, not executed; cell 3 was resumed.
    assert _lines(side) == ["1", "2", "3", "3", "4", "5", "6"]
    assert _outputs(out) == _outputs(ref_dir / "out.ipynb")
    assert _outputs(out)[5][0]["text"] == "done 1 2 20 21\n"

    # Editing cell 2 (as a user would: same cell ids) re-runs from cell 2 on; cell 1 stays stored.
    edited = nbformat.read(nb, as_version=4)
    edited.cells[1].source = edited.cells[1].source.replace("b = a + 1", "b = a + 100")
    nbformat.write(edited, nb)
    third = _run(work / "home", nb, out)
    assert third.returncode == 0, third.stderr
    assert _lines(side)[7:] == ["2", "3", "4", "5", "6"]
    assert _outputs(out)[5][0]["text"] == "done 1 101 1010 1011\n"


def test_failing_cell_reports_like_papermill(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('bad input')"),
                nbformat.v4.new_code_cell("print('never')")]
    path = tmp_path / "fail.ipynb"
    nbformat.write(nb, path)
    done = _run(tmp_path / "home", path, tmp_path / "out.ipynb")
    assert done.returncode == 1
    assert "exception in cell 2" in done.stderr and "ValueError: bad input" in done.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[1].outputs[0]["ename"] == "ValueError"
    assert out.cells[2].outputs == []
