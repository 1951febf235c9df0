"""Remote calls sent straight to a worker group, as a cell's ``durable.rpc`` sends them (docs: /work/notes/rpc13.md).

:class:`RemoteTasks` seals a call with a session's key and creates its task
promise ``exec:<msg_id>:rpc:<n>`` with the tags a cell gives it, through a
Resonate client of its own on the Postgres engine; :meth:`RemoteTasks.wait`
polls the promise until it is settled (with a deadline) and reads back the
stored record. For the worker tests and ``benchmarks/bench_workers.py``:
nothing of the kernel side is needed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from pathlib import Path
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from resonate.connections.sse import resolve_target
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.retry import Never, RetryPolicy
from resonate.types import PromiseRecord, TaskData, Value

from kernel.checkpoint.signing import Sealer, Signer
from kernel.core.ids import GROUP_TAG, KIND_TAG, REMOTE_CALL_FUNC, SESSION_TAG, exec_id, rpc_id
from kernel.durable.calls import open_failure, open_result, seal_call
from kernel.durable.codec import NoPickledErrors
from kernel.store.postgres.network import PgNetwork

T = TypeVar("T")
WEEK = timedelta(days=7)


class RemoteTasks:
    """A client that sends calls to worker groups on the Postgres engine at ``dsn``."""

    def __init__(self, dsn: str, key: str, *, session: str | None = None) -> None:
        self.dsn = dsn
        self.session = session or f"remote-tasks-{uuid.uuid4().hex[:8]}"
        self.sealer = Sealer(Signer(key.encode()), self.session)
        self.exec_id = exec_id(uuid.uuid4().hex)
        self._n = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.resonate: Resonate = self._call(self._start())

    async def _start(self) -> Resonate:
        network = PgNetwork(self.dsn, pid=f"tests-{uuid.uuid4().hex[:8]}", group="tests-client", drive_timers=False)
        # Send-only (no source: a client that pumped would take the group's messages).
        r = Resonate(network=network, sources=[], retry_policy=Never(), encryptor=NoPickledErrors(), env={},
                     autostart=False, subscription_refresh_secs=0)
        r.start()
        return r

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def next_id(self) -> str:
        self._n += 1
        return rpc_id(self.exec_id, self._n)

    def send(self, fn: Any, *args: Any, group: str, retries: RetryPolicy | None = None, timeout: float | None = None,
             promise_id: str | None = None, sealed: Any = None, **kwargs: Any) -> str:
        """Create the task promise of ``fn(*args, **kwargs)`` for ``group``; its id. ``sealed``
        replaces the sealed call (a planted or tampered one)."""
        pid = promise_id or self.next_id()
        call = sealed if sealed is not None else seal_call(self.sealer, pid, fn, args, kwargs, retries=retries or Never(), timeout=timeout)
        self._call(self.create(pid, call, group, timeout))
        return pid

    async def create(self, pid: str, call: Any, group: str, timeout: float | None = None) -> PromiseRecord:
        tags = {
            "resonate:scope": "global",
            "resonate:target": resolve_target(group),
            "resonate:origin": pid,
            "resonate:branch": pid,
            "resonate:parent": pid,
            SESSION_TAG: self.session,
            KIND_TAG: "rpc",
            GROUP_TAG: group,
        }
        timeout_at = int((time.time() + (timeout if timeout is not None else WEEK.total_seconds())) * 1000)
        return await self.resonate.promises.create(pid, timeout_at, Value(data=TaskData(func=REMOTE_CALL_FUNC, args=(call,))), tags)

    def get(self, pid: str) -> PromiseRecord | None:
        try:
            return self._call(self.resonate.promises.get(pid))
        except ServerError as exc:
            if exc.code == 404:
                return None
            raise

    def wait(self, pid: str, timeout: float = 60.0, interval: float = 0.05) -> PromiseRecord:
        """The settled record of ``pid``; AssertionError when it is still pending at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.get(pid)
            if record is not None and record.state != "pending":
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"{pid} still pending after {timeout:g}s")
            time.sleep(interval)

    def wait_all(self, pids: list[str], timeout: float = 120.0) -> dict[str, str]:
        """Poll the database until every promise of ``pids`` is settled; their states."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                rows = dict(conn.execute("SELECT id, state FROM resonate.promises WHERE id = ANY(%s)", (pids,)).fetchall())
                if len(rows) == len(pids) and all(s != "pending" for s in rows.values()):
                    return rows
                if time.monotonic() > deadline:
                    left = sum(1 for p in pids if rows.get(p, "pending") == "pending")
                    raise AssertionError(f"{left} of {len(pids)} promises still pending after {timeout:g}s")
                time.sleep(0.05)

    def result(self, record: PromiseRecord) -> Any:
        """The verified value of a resolved call (raises the verified failure of a rejected one)."""
        if record.state == "resolved":
            return open_result(self.sealer, record.id, record.value.data)
        raise open_failure(self.sealer, record.id, record.value.data)

    def body(self, record: PromiseRecord) -> dict[str, Any]:
        """The verified envelope of a resolved call (result, started_at, attempts, worker)."""
        return self.sealer.unseal(record.id, record.value.data, "the result of a remote call")

    def close(self) -> None:
        try:
            self._call(self.resonate.stop(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


class WorkerProcess:
    """A real ``pyrepl3 worker`` in its own home, Jupyter data dir and working directory."""

    def __init__(self, root: Path, dsn: str, key: str, *, group: str, name: str, concurrency: int = 2,
                 lease: float | None = None, grace: float | None = None, extra: dict[str, str] | None = None,
                 options: Sequence[str] = ()) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out = self.dir / "stdout.txt"
        self.err = self.dir / "stderr.txt"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYREPL3_") and k not in ("JPY_SESSION_NAME",)}
        env.update(HOME=str(self.dir), JUPYTER_DATA_DIR=str(self.dir / "jupyter"), PYREPL3_KEY=key, **(extra or {}))
        argv = [sys.executable, "-m", "kernel.cli.main", "worker", "--store", dsn, "--group", group, "--name", name,
                "--concurrency", str(concurrency)]
        if lease is not None:
            argv += ["--lease", str(lease)]
        if grace is not None:
            argv += ["--grace", str(grace)]
        argv += list(options)
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(argv, cwd=self.dir, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def log(self) -> str:
        """The tail of its output and its log (stderr), for a failing test's report."""
        err = self.err.read_text(errors="replace") if self.err.exists() else ""
        return f"--- {self.name}\n{self.output()[-2000:]}{err[-3000:]}"

    def lines(self, word: str) -> list[str]:
        """Output lines whose second field is ``word`` (start, done, failed, refused)."""
        return [line for line in self.output().splitlines() if line.split()[1:2] == [word]]

    def wait_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited ({self.proc.returncode}) before printing {text!r}: "
                                     f"{self.output()[-2000:]}{self.err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} did not print {text!r} within {timeout:g}s: {self.output()[-2000:]}")
            time.sleep(0.05)

    def ready(self, timeout: float = 30.0) -> WorkerProcess:
        self.wait_output(f"worker {self.name} in group", timeout)
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


__all__ = ["RemoteTasks", "WorkerProcess"]
