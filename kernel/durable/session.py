"""The durable side of one kernel: settings, session lock, engine, runtime.

Built once at kernel start. Opening can fail for reasons the user must hear
about (a corrupt or locked store, a wrong setting); the kernel then runs
without durability and says why, instead of refusing to start.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir

from kernel.checkpoint.checkpointer import Checkpointer
from kernel.core.settings import bool_setting, float_setting, redact, resolve_home, resolve_session
from kernel.core.errors import EngineConnectionError, PyRepl3Error
from kernel.durable.prompts import PromptBroker, answer_command
from kernel.durable.runtime import CellDispatcher, DurableRuntime
from kernel.checkpoint.signing import Signer, load_key
from kernel.checkpoint.history import NamespaceCheckpoints
from kernel.durable.steps import StepJournal
from kernel.store.base import Engine, SessionLock
from kernel.store.embedded.engine import EmbeddedEngine
from kernel.store.registry import open_engine

log = logging.getLogger(__name__)

#: The lease on a running cell (``Resonate(ttl=...)``; PYREPL3_LEASE_SECONDS).
#: The SDK heartbeats every ttl/2 from the runtime's own loop thread, which
#: stays free while the cell runs on the main thread, so a cell may run far
#: longer than this. It bounds how long a task of a kernel that vanished
#: without a successor stays leased; a successor on the same session gives such
#: leases back at start, so recovery after a crash does not wait for it.
DEFAULT_LEASE = timedelta(seconds=15)
#: Seconds between attempts to reach a lost engine again (PYREPL3_RECONNECT_SECONDS).
DEFAULT_RECONNECT = 5.0
#: Seconds a reconnected session waits for the engine to hand back an execution
#: whose outcome the lost session could not store.
CARRY_OVER_WAIT = 10.0


@dataclass
class DurableSession:
    session: str
    home: Path
    #: Where the state lives, for messages and ``%durable`` (a path, or the engine with credentials redacted).
    store_path: Path | str
    engine: Engine
    lock: SessionLock
    runtime: DurableRuntime
    dispatcher: CellDispatcher
    #: Seconds the kernel waits for the engine to hand a submitted cell back.
    start_timeout: float
    prompts: PromptBroker
    steps: StepJournal
    #: ``exec:`` ids a dead kernel of this session left pending, oldest first.
    interrupted: list[str]
    auto_resume: bool
    resume_limit: int
    checkpoints: NamespaceCheckpoints

    @classmethod
    def open(
        cls,
        *,
        env: Mapping[str, str] | None = None,
        home: str = "",
        store: str = "",
        connection_file: str = "",
        input_timeout: float = 86400.0,
        checkpoint_exclude: set[str] | None = None,
        checkpoint_max_bytes: int | None = None,
        ttl: timedelta | None = None,
        namespace_hidden: Mapping[str, object] | None = None,
    ) -> DurableSession:
        env = os.environ if env is None else env
        session = resolve_session(env, connection_file)
        start_timeout = float_setting(env, "PYREPL3_START_TIMEOUT", 30.0)
        input_timeout = float_setting(env, "PYREPL3_INPUT_TIMEOUT", input_timeout)
        auto_resume = bool_setting(env, "PYREPL3_AUTO_RESUME", False)
        resume_limit = int(float_setting(env, "PYREPL3_RESUME_LIMIT", 3))
        if ttl is None:
            ttl = timedelta(seconds=float_setting(env, "PYREPL3_LEASE_SECONDS", DEFAULT_LEASE.total_seconds()) or 1.0)
        signer = Signer(load_key(env, Path(jupyter_data_dir()) / "pyrepl3" / "key"))
        exclude = set(checkpoint_exclude or ())
        exclude |= {n.strip() for n in env.get("PYREPL3_CHECKPOINT_EXCLUDE", "").split(",") if n.strip()}
        max_bytes = int(float_setting(env, "PYREPL3_CHECKPOINT_MAX_BYTES", float(checkpoint_max_bytes or 0))) or None
        engine = open_engine(env, store=store, home=home)
        runtime: DurableRuntime | None = None
        lock: SessionLock | None = None
        try:
            lock = engine.lock(session, wait=float_setting(env, "PYREPL3_LOCK_WAIT", 3.0))
            pid = uuid.uuid4().hex
            network, sources = engine.network(session, pid)
            dispatcher = CellDispatcher()
            runtime = DurableRuntime(
                network, sources=sources, session=session, dispatcher=dispatcher, pid=pid, ttl=ttl, group=engine.group(session)
            ).start()
            interrupted = engine.interrupted_executions(session, pid)
            catalog = engine.catalog()
            checkpointer = Checkpointer(engine.blobs(), exclude=exclude, size_limit=max_bytes, hidden=namespace_hidden)
            checkpoints = NamespaceCheckpoints(checkpointer, signer, session, lambda: catalog.checkpoints(session))
        except BaseException:
            if runtime is not None:
                runtime.stop()
            engine.close()
            if lock is not None:
                lock.release()
            raise
        prompts = PromptBroker(
            runtime,
            timeout=input_timeout,
            answer_command=_answer_command(engine, env.get("PYREPL3_HOME") or home or None),
        )
        home_path = engine.home if isinstance(engine, EmbeddedEngine) else resolve_home(env, home)
        log.info("durable session %r on %s (lease %gs)", session, engine.where, ttl.total_seconds())
        return cls(
            session,
            home_path,
            engine.where,
            engine,
            lock,
            runtime,
            dispatcher,
            start_timeout,
            prompts,
            StepJournal(runtime),
            interrupted,
            auto_resume,
            resume_limit,
            checkpoints,
        )

    def catalog(self) -> Any:
        return self.engine.catalog()

    def healthy(self) -> bool:
        return self.engine.healthy()

    def close(self) -> None:
        self.runtime.stop()
        self.engine.close()
        self.lock.release()


def reconnect_interval(env: Mapping[str, str]) -> float:
    """PYREPL3_RECONNECT_SECONDS, or the default when unset or unusable (never fails a kernel start)."""
    try:
        return float_setting(env, "PYREPL3_RECONNECT_SECONDS", DEFAULT_RECONNECT) or DEFAULT_RECONNECT
    except PyRepl3Error as exc:
        log.warning("PyREPL3: %s; using %gs", exc, DEFAULT_RECONNECT)
        return DEFAULT_RECONNECT


def _answer_command(engine: Engine, home: str | None) -> str:
    """The ``pyrepl3`` invocation a user can paste to answer a prompt of this kernel
    (a DSN's password shows as ``***``: it is never printed)."""
    if isinstance(engine, EmbeddedEngine):
        if engine.spec.target:
            return f"pyrepl3 --store {shlex.quote(str(engine.home))}"
        return answer_command(home)
    return f"pyrepl3 --store {shlex.quote(redact(engine.spec.target))}"


class SessionKeeper:
    """Keeps a kernel's durable session open, or says why it is not and gets it back.

    ``open`` runs at kernel start. If the engine is unreachable then, or is lost
    later (:meth:`lost`), a background thread tries to open the session again
    every ``interval`` seconds; the kernel picks the new session up with
    :meth:`poll` before its next cell. Nothing settled before is lost: the
    engine kept it, and the new session reads it back from there.
    """

    def __init__(self, opener: Callable[[], DurableSession], notice: Callable[[str], None], *, interval: float = DEFAULT_RECONNECT) -> None:
        self._opener = opener
        self._notice = notice
        self.interval = interval
        self._lock = threading.Lock()
        self._ready: DurableSession | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.reconnects = 0

    def open(self) -> DurableSession | None:
        try:
            return self._opener()
        except EngineConnectionError as exc:
            self._notice(f"durability is off: {exc}; PyREPL3 will reconnect by itself (every {self.interval:g}s)")
            self._start(None)
        except PyRepl3Error as exc:
            self._notice(f"durability is off: {exc}")
        except Exception as exc:  # noqa: BLE001 - the kernel must start regardless
            log.exception("could not open the durable store")
            self._notice(f"durability is off: the durable store could not be opened ({exc})")
        return None

    def lost(self, ds: DurableSession, why: BaseException | str) -> None:
        """The engine went away under ``ds``: close it (in the background) and start reconnecting."""
        self._notice(f"durability is off: {why}; PyREPL3 will reconnect by itself (every {self.interval:g}s)")
        self._start(ds)

    def poll(self) -> DurableSession | None:
        """A session opened in the background since the last call, if any."""
        with self._lock:
            ds, self._ready = self._ready, None
        if ds is not None:
            self.reconnects += 1
            self._notice(f"durability is back on: reconnected to {ds.store_path}")
        return ds

    @property
    def reconnecting(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self, old: DurableSession | None) -> None:
        if self.reconnecting:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(old,), name="pyrepl3-reconnect", daemon=True)
        self._thread.start()

    def _run(self, old: DurableSession | None) -> None:
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                log.debug("closing the lost session failed", exc_info=True)
        reported = ""
        while not self._stop.wait(self.interval):
            try:
                ds = self._opener()
            except EngineConnectionError as exc:
                log.info("engine still unreachable: %s", exc)
                continue
            except Exception as exc:  # noqa: BLE001 - keep trying; say it once
                if str(exc) != reported:
                    reported = str(exc)
                    self._notice(f"durability stays off: {exc}")
                continue
            if old is not None:
                self._carry_over(old, ds)
            with self._lock:
                if self._stop.is_set():
                    ds.close()
                    return
                self._ready = ds
            return

    def _carry_over(self, old: DurableSession, new: DurableSession) -> None:
        """Store what the lost session could not: a cell that finished while the
        engine was away left its execution pending; its outcome is still known
        here, so the new session settles it with that outcome (it is not
        reported as interrupted)."""
        for eid in list(new.interrupted):
            outcome = old.dispatcher.outcome_of(eid)
            if outcome is None:
                continue
            orphan = new.dispatcher.take_orphan(eid, CARRY_OVER_WAIT)
            if orphan is None:
                continue
            new.interrupted.remove(eid)
            orphan.outcome.set_result(outcome)
            try:
                new.runtime.wait_settled(eid, timeout=CARRY_OVER_WAIT)
            except PyRepl3Error as exc:
                log.warning("could not confirm that %s was stored after reconnecting: %s", eid, exc)
                continue
            self._notice(f"{eid} finished while the engine was away; its outcome is stored now")

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            ds, self._ready = self._ready, None
        if ds is not None:
            ds.close()
