"""PyREPL3 in a real JupyterLab, in a real browser (issue 11, point 5).

Starts the venv's ``jupyter lab`` (see labdriver.LabServer) and drives the system
Chromium (``/usr/bin/chromium``, Debian's package) with Playwright, through
menus, the keyboard and clicks, reading outputs from the DOM. Screenshots of
the key moments and the server's log are written to tests/artifacts/jupyterlab/.

Run alone with ``pytest tests/test_jupyterlab.py`` (or ``-m jupyterlab``; leave
it out with ``-m "not jupyterlab"``). Skipped, with the reason, where Chromium
or Playwright is missing, except on CI (``CI=true``), where that is an error:
.ci/run installs Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import wait_for
from labdriver import CHROMIUM, CHROMIUM_ARGS, UI_TIMEOUT, Lab, LabServer

ON_CI = os.environ.get("CI", "").lower() == "true"


def _unusable() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
        import psutil  # noqa: F401
    except ImportError as exc:
        return f"Playwright cannot be used: {exc} (python3 install.py --test)"
    return None


REASON = _unusable()
if REASON and ON_CI:
    raise RuntimeError(f"tests/test_jupyterlab.py must run on CI: {REASON}")
pytestmark = [
    pytest.mark.jupyterlab,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "jupyterlab"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    lab = LabServer(tmp_path_factory.mktemp("jupyterlab"), ARTIFACTS / "jupyter-server.log")
    print(f"\njupyter lab log and screenshots: {ARTIFACTS}")
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def lab(server: LabServer, browser: Any, request: pytest.FixtureRequest) -> Iterator[Lab]:
    shots = ARTIFACTS / request.node.name
    shots.mkdir(parents=True, exist_ok=True)
    ui = Lab(browser, server, shots, workspace=request.node.name.replace("_", "-"))
    ui.open()
    try:
        yield ui
    finally:
        if ui.page is not None:
            ui.shot("99-last")  # what the page showed at the end, pass or fail
            ui.page.close()
        for session in server.api("GET", "/api/sessions"):  # the next test gets the CPU
            server.api("DELETE", f"/api/sessions/{session['id']}")


def sessions_of(server: LabServer, path: str) -> list[dict[str, Any]]:
    return [s for s in server.api("GET", "/api/sessions") if s["path"] == path]


def kernel_of(server: LabServer, path: str) -> dict[str, Any]:
    """The kernel of the notebook at ``path``, from the server's /api/sessions."""
    sessions = sessions_of(server, path)
    assert len(sessions) == 1, f"sessions for {path}: {sessions}"
    return sessions[0]["kernel"]


@pytest.mark.timeout(170)
def test_notebook_keeps_its_state_through_restart_kill_and_reopen(lab: Lab, server: LabServer) -> None:
    path = lab.new_notebook()
    assert path.endswith(".ipynb")
    assert kernel_of(server, path)["name"] == "pyrepl3"

    # Cells run, and an expression's value is shown.
    lab.wait_done(lab.run("x = 41"))
    cell = lab.run("x + 1")
    lab.wait_output(cell, re.compile(r"^42$", re.M))

    # input(): answered in the page's stdin box; the answer is used later.
    cell = lab.run('name = input("your name? ")')
    box = cell.locator(".jp-Stdin-input")
    box.wait_for()
    lab.shot("02-stdin-box")
    box.click()
    lab.page.keyboard.type("Ada")
    lab.page.keyboard.press("Enter")
    lab.wait_done(cell)
    cell = lab.run("print(name.upper())")
    lab.wait_output(cell, "ADA")
    lab.shot("03-cells-ran")

    # Kernel > Restart Kernel…, confirm: the variables are back.
    before = kernel_of(server, path)["id"]
    lab.menu("Kernel", "Restart Kernel…")
    lab.accept_dialog("Restart Kernel?")
    lab.wait_kernel_idle()
    cell = lab.run("print(x, name)")
    lab.wait_output(cell, "41 Ada")
    assert kernel_of(server, path)["id"] == before  # a restart keeps the kernel id
    lab.shot("04-after-restart")

    # kill -9 the kernel process: JupyterLab's auto restart brings the variables back.
    kernel_id = kernel_of(server, path)["id"]
    pid = server.kernel_pid(kernel_id)
    os.kill(pid, signal.SIGKILL)
    lab.accept_dialog("Kernel Restarting", timeout=UI_TIMEOUT)
    new_pid = wait_for(
        lambda: (lambda p: p if p and p != pid else None)(_pid_or_none(server, kernel_id)),
        what="the restarted kernel's process",
    )
    # (After an auto restart JupyterLab's kernel status stays "Starting" until the
    # kernel next says something, so no wait for "Idle" here: the cell is queued.)
    cell = lab.run("x += 1; print(x, name)")
    lab.wait_output(cell, "42 Ada")
    assert new_pid != pid
    lab.shot("05-after-kill-9")

    # Close the notebook and shut down its kernel; reopen it: a new kernel continues its session.
    lab.save()
    lab.menu("File", "Close and Shut Down Notebook…")
    lab.accept_dialog(re.compile("Shut down"))
    wait_for(lambda: not sessions_of(server, path), what="the notebook's session to end")
    assert not [k for k in server.kernels() if k["id"] == kernel_id]
    lab.page.locator(".jp-DirListing-item", has_text=path).dblclick()
    lab.notebook.wait_for()
    wait_for(lambda: sessions_of(server, path), what="a kernel for the reopened notebook")
    lab.wait_kernel_idle()
    assert kernel_of(server, path)["id"] != kernel_id
    cell = lab.run("print(x, name)")
    lab.wait_output(cell, "42 Ada")
    lab.shot("06-reopened")


def _pid_or_none(server: LabServer, kernel_id: str) -> int | None:
    try:
        return server.kernel_pid(kernel_id)
    except AssertionError:
        return None


@pytest.mark.timeout(170)
def test_durable_outputs_bring_back_what_a_closed_page_missed(lab: Lab, server: LabServer) -> None:
    """A page closed during a long cell misses its outputs; ``%durable outputs`` brings them back."""
    path = lab.new_notebook()
    code = (
        "import time\n"
        "for i in range(1, 11):\n"
        "    print(f'progress {i}/10', flush=True)\n"
        "    time.sleep(2)\n"
        "print('all done')"
    )
    cell = lab.run(code)
    lab.wait_output(cell, "progress 2/10")
    lab.save()  # the cell and what it showed so far, as a person would before closing
    lab.shot("01-long-cell-running")
    kernel_id = kernel_of(server, path)["id"]
    lab.close_page()

    # Reopen the notebook: the same kernel, still running the cell the page left.
    lab.open(path)
    assert kernel_of(server, path)["id"] == kernel_id
    assert server.api("GET", f"/api/kernels/{kernel_id}")["execution_state"] == "busy"  # still running the cell
    lab.shot("02-reopened-while-running")
    deadline = time.monotonic() + 40
    wait_for(
        lambda: server.api("GET", f"/api/kernels/{kernel_id}")["execution_state"] == "idle",
        timeout=max(1.0, deadline - time.monotonic()),
        what="the long cell to finish",
    )
    lab.wait_kernel_idle()

    cell = lab.run("%durable outputs")
    lab.wait_done(cell)
    lab.shot("03-durable-outputs")
    text = lab.output_text(cell)
    expected = [f"progress {i}/10" for i in range(1, 11)] + ["all done"]
    assert [line for line in text.splitlines() if line in expected] == expected, text
