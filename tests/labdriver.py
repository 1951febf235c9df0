"""Drive a real JupyterLab server and a real (system) Chromium for tests/test_jupyterlab.py.

``LabServer`` starts the venv's ``jupyter lab`` on 127.0.0.1 with its own token,
root dir, config, data, runtime and settings dirs, and nothing that reaches the
network (news, update checks, the PyPI extension manager). ``Lab`` wraps a
Playwright page on it and does what a person does: menus, keyboard, clicks, and
reading outputs from the DOM. Selectors are roles, texts and JupyterLab's
stable CSS classes (``.jp-Notebook``, ``.jp-Cell``, ``.jp-OutputArea-output``,
``.jp-Stdin-input``, ``.jp-Dialog``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness import kernel_env, wait_for

CHROMIUM = "/usr/bin/chromium"
#: Launch flags that work as root, headless, on a machine with no network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KERNEL_DISPLAY_NAME = "Python 3 (PyREPL3, durable)"
#: Seconds for one UI wait (a cell's output, a dialog); a cold kernel start under
#: load (2 shared cores) takes a few seconds.
UI_TIMEOUT = 30.0
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``jupyter lab`` in a temp dir; the kernels it starts use ``home`` as PYREPL3_HOME."""

    def __init__(self, base: Path, log: Path) -> None:
        self.base = base
        self.root = base / "notebooks"
        self.home = base / "pyrepl3-home"
        self.runtime = base / "runtime"
        self.log_path = log
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        settings = self.base / "user-settings"
        notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notification.parent.mkdir(parents=True)
        # No "Would you like to get notified about official Jupyter news?" toast.
        notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        # No "Rename file" dialog on the first save: a notebook keeps the path its
        # kernel was started for (PyREPL3's session is that path, JPY_SESSION_NAME).
        docmanager = settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings"
        docmanager.parent.mkdir(parents=True)
        docmanager.write_text(json.dumps({"renameUntitledFileOnSave": False}))
        for d in (self.root, self.runtime, self.base / "config", self.base / "data", self.base / "workspaces"):
            d.mkdir(parents=True, exist_ok=True)
        env = kernel_env(
            self.home,
            JUPYTER_CONFIG_DIR=str(self.base / "config"),
            JUPYTER_DATA_DIR=str(self.base / "data"),
            JUPYTER_RUNTIME_DIR=str(self.runtime),
            IPYTHONDIR=str(self.base / "ipython"),
        )
        env.pop("JPY_SESSION_NAME", None)
        argv = [
            str(BIN / "jupyter"),
            "lab",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.base / 'workspaces'}",
            "--ServerApp.log_level=DEBUG",
        ]
        if os.geteuid() == 0:
            argv.append("--allow-root")  # CI runs as root
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server process keeps its own copy
        try:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited with {self.proc.returncode}; see {self.log_path}")
            try:
                return self.api("GET", "/api/status") is not None
            except (OSError, urllib.error.URLError):
                return False

        wait_for(ready, timeout=timeout, interval=0.25, what=f"jupyter lab on {self.url} (log: {self.log_path})")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def kernels(self) -> list[dict[str, Any]]:
        return self.api("GET", "/api/kernels")

    def kernel_pid(self, kernel_id: str) -> int:
        """The pid of the kernel process: the one whose command line names its connection file."""
        import psutil

        connection_file = str(self.runtime / f"kernel-{kernel_id}.json")
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if connection_file in (proc.info["cmdline"] or []):
                return proc.info["pid"]
        raise AssertionError(f"no process has {connection_file} on its command line")

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), SIGKILL after 15 s; then any
        kernel of this server still alive (kernels run in sessions of their own)."""
        import psutil

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        runtime = str(self.runtime) + os.sep
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(arg.startswith(runtime) for arg in proc.info["cmdline"] or []):
                proc.kill()


class Lab:
    """One browser page on a LabServer, used the way a person uses JupyterLab."""

    def __init__(self, browser: Any, server: LabServer, shots: Path, workspace: str = "test") -> None:
        self.browser = browser
        self.server = server
        self.shots = shots
        #: A named workspace of its own, so the tabs another test left open stay closed.
        self.workspace = workspace
        self.page: Any = None

    # -- the page ------------------------------------------------------------

    def open(self, path: str = "") -> None:
        """Open JupyterLab in a new page (``path``: a notebook to open with it)."""
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(UI_TIMEOUT * 1000)
        target = f"/lab/workspaces/{self.workspace}" + (f"/tree/{path}" if path else "")
        self.page.goto(f"{self.server.url}{target}?token={self.server.token}")
        self.page.locator("#jp-main-dock-panel").wait_for(timeout=60_000)  # a cold first load bundles a lot of JS
        if path:
            self.notebook.wait_for()

    def close_page(self) -> None:
        self.page.close()
        self.page = None

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    # -- menus and dialogs ---------------------------------------------------

    def menu(self, *labels: str) -> None:
        """Click a menu path, e.g. ``menu("File", "New", "Notebook")``."""
        self.page.locator(".lm-MenuBar-item", has_text=re.compile(f"^{re.escape(labels[0])}$")).click()
        for depth, label in enumerate(labels[1:], start=1):
            menu = self.page.locator(".lm-Menu").nth(depth - 1)
            item = menu.locator(".lm-Menu-item:not(.lm-mod-disabled)").filter(
                has=self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(label)}$"))
            )
            if depth < len(labels) - 1:
                item.hover()
                self.page.locator(".lm-Menu").nth(depth).wait_for()
            else:
                item.click()

    @property
    def dialog(self) -> Any:
        return self.page.locator(".jp-Dialog")

    def accept_dialog(self, title: str | re.Pattern[str], timeout: float = UI_TIMEOUT) -> None:
        """Wait for a dialog whose header says ``title`` and press its main button."""
        header = self.dialog.locator(".jp-Dialog-header", has_text=title)
        header.wait_for(timeout=timeout * 1000)
        self.dialog.locator("button.jp-mod-accept").click()
        self.dialog.wait_for(state="detached")

    # -- notebooks -----------------------------------------------------------

    @property
    def notebook(self) -> Any:
        """The notebook in the current main-area tab."""
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")

    @property
    def cells(self) -> Any:
        return self.notebook.locator(".jp-Cell")

    def new_notebook(self, kernel: str = KERNEL_DISPLAY_NAME) -> str:
        """File > New > Notebook, pick ``kernel`` in the kernel picker; returns the notebook's path."""
        self.menu("File", "New", "Notebook")
        self.dialog.locator(".jp-Dialog-header", has_text="Select Kernel").wait_for()
        self.dialog.locator("select").select_option(label=kernel)
        self.shot("00-kernel-picker")
        self.dialog.get_by_role("button", name="Select").click()
        self.dialog.wait_for(state="detached")
        self.notebook.wait_for()
        self.wait_kernel_idle()
        return self.current_path()

    def current_path(self) -> str:
        """The current notebook's path (its tab's label: notebooks here live in the root dir)."""
        return self._current_tab.locator(".lm-TabBar-tabLabel").inner_text().strip()

    @property
    def _current_tab(self) -> Any:
        return self.page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current")

    def kernel_status(self) -> str:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator").first.get_attribute("data-status") or ""

    def wait_kernel_idle(self, timeout: float = UI_TIMEOUT) -> None:
        wait_for(lambda: self.kernel_status() == "idle", timeout=timeout, what="the notebook's kernel to be idle")

    def save(self) -> None:
        """Ctrl+S, until the tab's "unsaved" mark is gone."""
        self.page.keyboard.press("Control+s")
        wait_for(lambda: "jp-mod-dirty" not in (self._current_tab.get_attribute("class") or ""), what="the notebook to be saved")

    def run(self, code: str) -> Any:
        """Type ``code`` into a fresh cell at the end and press Shift+Enter; returns the cell."""
        last = self.cells.last
        editor = last.locator(".cm-content")
        editor.click()
        if editor.inner_text().strip():
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("b")  # command mode: insert a cell below
            last = self.cells.last
            editor = last.locator(".cm-content")
            editor.click()
        index = self.cells.count() - 1
        if "\n" in code:
            self.page.keyboard.insert_text(code)  # like a paste: no auto-indentation
        else:
            self.page.keyboard.type(code)
        self.page.keyboard.press("Shift+Enter")
        return self.cells.nth(index)

    def wait_done(self, cell: Any, timeout: float = UI_TIMEOUT) -> None:
        """Until the cell's prompt shows an execution count (not ``[*]`` or ``[ ]``)."""
        cell.locator(".jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).wait_for(timeout=timeout * 1000)

    def stdout(self, cell: Any) -> str:
        out = cell.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]')
        return "".join(out.nth(i).inner_text() for i in range(out.count()))

    def output_text(self, cell: Any) -> str:
        out = cell.locator(".jp-OutputArea-output")
        return "\n".join(out.nth(i).inner_text() for i in range(out.count()))

    def wait_output(self, cell: Any, pattern: str | re.Pattern[str], timeout: float = UI_TIMEOUT) -> str:
        """Until the cell's outputs contain ``pattern`` (text or regex); returns them."""
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))
        try:
            return wait_for(
                lambda: (lambda text: text if rx.search(text) else "")(self.output_text(cell)),
                timeout=timeout,
                interval=0.2,
                what=f"output matching {rx.pattern!r}",
            )
        except AssertionError as exc:
            self.shot("failure")
            raise AssertionError(f"{exc}; the cell shows {self.output_text(cell)!r}") from None
