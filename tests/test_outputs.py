"""A cell's stored outputs are the outputs the notebook shows (nbclient as the frontend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from harness import TIMEOUT, kernel_env, show
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

FAITHFUL = {
    "streams-interleaved": (
        "import sys, time\nprint('a', flush=True)\ntime.sleep(0.05)\nprint('b')\n"
        "print('err', file=sys.stderr, flush=True)\ntime.sleep(0.05)\nprint('c')"
    ),
    "rich-display": (
        "from IPython.display import display, Markdown, JSON, Image\nimport base64\n"
        f"display(Markdown('**m**'))\ndisplay(Image(data=base64.b64decode({PNG!r})))\nJSON({{'a': [1, 2]}})"
    ),
    "non-ascii": "print('héllo ✓ \\u2603')\n'ünïcode'",
    "output-then-error": "print('before')\n{}['missing']",
    "numpy-result": "import numpy as np\nnp.arange(4)",
    "carriage-return": "print('x', end='')\nprint('y\\r', end='')\nprint('z')",
}

OUTPUT_CHANGES = {
    "clear_output": (
        "from IPython.display import clear_output\n"
        "for i in range(3):\n    clear_output(wait=True)\n    print(i)"
    ),
    "update_display": "h = display('first', display_id=True)\nh.update('updated')",
}
def run_notebook(sources: list[str], home: Path, session: str, tmp_path: Path) -> list[tuple[Any, dict[str, Any]]]:
    """Run the cells with nbclient; pair each cell's notebook outputs with its stored promise."""
    nb = new_notebook(
        cells=[new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "pyrepl3", "display_name": "PyREPL3", "language": "python"}},
    )
    msg_ids: dict[int, str] = {}
    client = NotebookClient(
        nb,
        timeout=TIMEOUT,
        startup_timeout=TIMEOUT,
        allow_errors=True,
        on_cell_executed=lambda cell, cell_index, execute_reply: msg_ids.__setitem__(
            cell_index, execute_reply["parent_header"]["msg_id"]
        ),
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=kernel_env(home, session))
    return [(json.loads(json.dumps(cell.outputs)), show(home, f"exec:{msg_ids[i]}")) for i, cell in enumerate(nb.cells)]


def stored_outputs(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return rec["value"]["outputs"] if rec["state"] == "resolved" else rec["error"]["outputs"]


def coalesced(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``outputs`` with each run of consecutive stream outputs of one name merged into one.

    How a cell's text is cut into stream messages depends on when ipykernel
    flushes (``print('x', end='')`` then ``print('y')`` is one message or two);
    nbclient keeps one output per message and JupyterLab shows a run as one.
    The store keeps the merged form, the one independent of that timing.
    """
    merged: list[dict[str, Any]] = []
    for out in outputs:
        last = merged[-1] if merged else None
        if last and out["output_type"] == last["output_type"] == "stream" and out["name"] == last["name"]:
            merged[-1] = {**last, "text": last["text"] + out["text"]}
        else:
            merged.append(dict(out))
    return merged


def test_stored_outputs_match_the_notebook(tmp_path: Path, home: Path) -> None:
    results = run_notebook(list(FAITHFUL.values()), home, "outputs", tmp_path)
    for name, (notebook, rec) in zip(FAITHFUL, results):
        assert notebook, name
        stored = stored_outputs(rec)
        assert stored == coalesced(stored), f"{name}: stored streams are merged"
        assert stored == coalesced(notebook), name
    assert results[list(FAITHFUL).index("output-then-error")][1]["state"] == "rejected"


@pytest.mark.parametrize("name", list(OUTPUT_CHANGES))
def test_stored_outputs_follow_cleared_and_updated_output(name: str, tmp_path: Path, home: Path) -> None:
    [(notebook, rec)] = run_notebook([OUTPUT_CHANGES[name]], home, f"changes-{name}", tmp_path)
    assert stored_outputs(rec) == coalesced(notebook)
