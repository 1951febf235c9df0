"""Helpers for driving real ``pyrepl3`` kernels and reading the store through the CLI."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager
from jupyter_client.multikernelmanager import MultiKernelManager

KERNEL_NAME = "pyrepl3"
#: Seconds any single wait on a kernel may take.
TIMEOUT = 30.0
BIN = Path(sys.executable).parent
PYREPL3_CLI = BIN / "pyrepl3"
#: Settings that must never leak from the developer's shell into a test kernel:
#: every PYREPL3_* variable, and the session name jupyter_server would set.
SCRUBBED = tuple(
    sorted({"PYREPL3_HOME", "PYREPL3_SESSION", "JPY_SESSION_NAME", *(k for k in os.environ if k.startswith("PYREPL3_"))})
)


# -- the engine a test runs on ----------------------------------------------------


@dataclass
class Store:
    """The engine under test: ``embedded`` (each test's own PYREPL3_HOME) or
    ``postgres`` (one shared database, ``dsn``).

    A shared database holds every test's sessions, so on Postgres each test
    gets a namespace: the session names it uses are stored as ``<name>.<ns>``,
    and what the CLI reports is mapped back and limited to this test's
    sessions. Test bodies stay engine-agnostic: they name sessions as usual.
    """

    kind: str = "embedded"
    dsn: str = ""
    ns: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    #: PYREPL3_BLOBS, for a Resonate server (``http``).
    blobs: str = ""

    @property
    def shared(self) -> bool:
        return self.kind != "embedded"

    def session(self, name: str | None) -> str | None:
        if name is None or not self.shared or name.endswith(f".{self.ns}"):
            return name
        return f"{name}.{self.ns}"

    def mine(self, name: Any) -> bool:
        return not self.shared or (isinstance(name, str) and name.endswith(f".{self.ns}"))

    def local(self, name: Any) -> Any:
        return name[: -len(self.ns) - 1] if self.shared and self.mine(name) else name

    def env(self) -> dict[str, str]:
        env = {"PYREPL3_STORE": self.dsn} if self.shared else {}
        if self.blobs:
            env["PYREPL3_BLOBS"] = self.blobs
        return env

    def cli_args(self) -> list[str]:
        return ["--store", self.dsn] if self.shared else []

    def view(self, data: Any) -> Any:
        """CLI JSON output as this test should see it (its own sessions, local names)."""
        if not self.shared:
            return data
        if isinstance(data, list):
            return [self.view(d) for d in data if not (isinstance(d, dict) and "session" in d and not self.mine(d["session"]))]
        if isinstance(data, dict) and "session" in data:
            return {**data, "session": self.local(data["session"])}
        return data


#: The engine of the running test (set by the ``store`` fixture in conftest.py).
CURRENT = Store()


def use_store(store: Store) -> None:
    global CURRENT
    CURRENT = store


def kernel_env(home: Path | None, session: str | None = None, *, store: Store | None = None, **extra: str) -> dict[str, str]:
    """The environment for a kernel: the test process's, minus PyREPL3 settings,
    plus the engine under test and the ones given."""
    store = CURRENT if store is None else store
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    if home is not None:
        env["PYREPL3_HOME"] = str(home)
    if session is not None:
        env["PYREPL3_SESSION"] = store.session(session)  # type: ignore[assignment]
    env.update(store.env())
    env.update(extra)
    return env


# -- the CLI -----------------------------------------------------------------


def cli(home: Path, *args: str, check: bool = True, store: Store | None = None) -> subprocess.CompletedProcess[str]:
    """``pyrepl3 --home HOME [--store DSN] ARGS`` on the engine under test."""
    store = CURRENT if store is None else store
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    args = tuple(store.session(a) if i and args[i - 1] == "--session" else a for i, a in enumerate(args))
    if store.blobs:
        env["PYREPL3_BLOBS"] = store.blobs
    proc = subprocess.run(
        [str(PYREPL3_CLI), "--home", str(home), *store.cli_args(), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, f"pyrepl3 {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
    if store.shared and "--json" in args and proc.returncode == 0:
        # Only this test's sessions, printed in the CLI's own shape (indent=2, newline).
        proc.stdout = json.dumps(store.view(json.loads(proc.stdout)), indent=2) + "\n"
    return proc


def cli_json(home: Path, *args: str, store: Store | None = None) -> Any:
    store = CURRENT if store is None else store
    return json.loads(cli(home, *args, "--json", store=store).stdout)


def executions(home: Path, session: str | None = None, *, store: Store | None = None) -> dict[str, dict[str, Any]]:
    """``pyrepl3 executions --json``, keyed by promise id."""
    args = ["executions"] + (["--session", session] if session is not None else [])
    return {row["id"]: row for row in cli_json(home, *args, store=store)}


def show(home: Path, promise_id: str, *, store: Store | None = None) -> dict[str, Any]:
    return cli_json(home, "show", promise_id, store=store)


def wait_for(predicate: Any, timeout: float = TIMEOUT, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- kernels -----------------------------------------------------------------


@dataclass
class Run:
    """One execute_request and everything the kernel said about it."""

    msg_id: str
    reply: dict[str, Any]
    iopub: list[dict[str, Any]] = field(default_factory=list)

    @property
    def content(self) -> dict[str, Any]:
        return self.reply["content"]

    def outputs(self) -> list[dict[str, Any]]:
        kinds = {"stream", "display_data", "execute_result", "error"}
        return [m for m in self.iopub if m["header"]["msg_type"] in kinds]

    def stream(self, name: str) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.iopub
            if m["header"]["msg_type"] == "stream" and m["content"]["name"] == name
        )

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [m for m in self.iopub if m["header"]["msg_type"] == msg_type]


class Kernel:
    """A started kernel and a blocking client on it."""

    def __init__(self, km: KernelManager, home: Path | None, session: str | None) -> None:
        self.km = km
        self.home = home
        self.session = session
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=TIMEOUT)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def send_execute(self, code: str, msg_id: str | None = None, cell_id: str | None = None, **content: Any) -> str:
        body = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
            **content,
        }
        msg = self.kc.session.msg("execute_request", body)
        if msg_id is not None:
            msg["header"]["msg_id"] = msg_id
        if cell_id is not None:
            msg["metadata"]["cellId"] = cell_id  # as JupyterLab sends it
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def next_for(self, channel: str, msg_id: str, deadline: float, what: str) -> dict[str, Any]:
        """The next message on ``channel`` ("shell" or "iopub") whose parent is ``msg_id``."""
        get = self.kc.get_shell_msg if channel == "shell" else self.kc.get_iopub_msg
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {what} for {msg_id} within the deadline")
            try:
                msg = get(timeout=remaining)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def collect(self, msg_id: str, timeout: float = TIMEOUT) -> Run:
        """The execute_reply for ``msg_id`` and its iopub messages up to idle."""
        deadline = time.monotonic() + timeout
        reply = self.next_for("shell", msg_id, deadline, "execute_reply")
        iopub = []
        while True:
            msg = self.next_for("iopub", msg_id, deadline, "idle status")
            iopub.append(msg)
            if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return Run(msg_id, reply, iopub)

    def execute(self, code: str, msg_id: str | None = None, timeout: float = TIMEOUT, **content: Any) -> Run:
        return self.collect(self.send_execute(code, msg_id, **content), timeout)

    def ok(self, code: str, **kw: Any) -> Run:
        run = self.execute(code, **kw)
        assert run.content["status"] == "ok", run.content
        return run

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.km.provisioner.process.wait(timeout=TIMEOUT)  # type: ignore[union-attr]
        assert not self.km.is_alive()

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km.has_kernel and self.km.is_alive():
            self.km.shutdown_kernel(now=True)
        else:
            self.km.cleanup_resources()


class KernelFactory:
    def __init__(self, default_home: Path) -> None:
        self.default_home = default_home
        self.started: list[Kernel] = []

    def start(
        self,
        session: str | None = "test-session",
        home: Path | None = None,
        env: dict[str, str] | None = None,
        multi: bool = False,
        extra_arguments: list[str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> Kernel:
        """Start a kernel; ``multi`` starts it the way jupyter_server does, through
        a MultiKernelManager (connection file ``kernel-<kernel id>.json``).
        ``log`` receives the kernel process's stdout and stderr (its log);
        ``cwd`` is its working directory."""
        home = self.default_home if home is None else home
        env = kernel_env(home, session) if env is None else env
        launch: dict[str, Any] = {}
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 - closed below, once the kernel has its copy
            launch.update(stdout=out, stderr=out)
        if cwd is not None:
            launch["cwd"] = str(cwd)
        if multi:
            mkm = MultiKernelManager()
            kernel_id = mkm.start_kernel(kernel_name=KERNEL_NAME, env=env, extra_arguments=extra_arguments or [], **launch)
            km = mkm.get_kernel(kernel_id)
        else:
            km = KernelManager(kernel_name=KERNEL_NAME)
            km.start_kernel(env=env, extra_arguments=extra_arguments or [], **launch)
        if "stdout" in launch:
            launch["stdout"].close()  # the kernel process has its own copy
        try:
            kernel = Kernel(km, home, session)
        except BaseException:
            km.shutdown_kernel(now=True)
            raise
        self.started.append(kernel)
        return kernel

    def close(self) -> None:
        for kernel in reversed(self.started):
            try:
                kernel.close()
            except Exception:  # noqa: BLE001 - clean up the rest regardless
                pass
