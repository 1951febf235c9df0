"""The durable side of one kernel: settings, session lock, engine, runtime.

Built once at kernel start. Opening can fail for reasons the user must hear
about (a corrupt or locked store, a wrong setting); the kernel then runs
without durability and says why, instead of refusing to start.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir

from kernel.checkpoint import Checkpointer
from kernel.config import bool_setting, float_setting, resolve_home, resolve_session, store_path
from kernel.prompts import PromptBroker, answer_command
from kernel.signing import Signer, load_key
from kernel.snapshots import NamespaceCheckpoints
from kernel.steps import StepJournal
from kernel.store.blobs import BlobStore
from kernel.runtime import CellDispatcher, DurableRuntime
from kernel.store.catalog import Catalog
from kernel.store.embedded import EmbeddedStore
from kernel.store.locks import SessionLock

log = logging.getLogger(__name__)


@dataclass
class DurableSession:
    session: str
    home: Path
    store_path: Path
    lock: SessionLock
    store: EmbeddedStore
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
        connection_file: str = "",
        input_timeout: float = 86400.0,
        checkpoint_exclude: set[str] | None = None,
        checkpoint_max_bytes: int | None = None,
        ttl: timedelta = timedelta(seconds=30),
    ) -> DurableSession:
        env = os.environ if env is None else env
        home_path = resolve_home(env, home)
        session = resolve_session(env, connection_file)
        start_timeout = float_setting(env, "PYREPL3_START_TIMEOUT", 30.0)
        input_timeout = float_setting(env, "PYREPL3_INPUT_TIMEOUT", input_timeout)
        auto_resume = bool_setting(env, "PYREPL3_AUTO_RESUME", False)
        resume_limit = int(float_setting(env, "PYREPL3_RESUME_LIMIT", 3))
        signer = Signer(load_key(env, Path(jupyter_data_dir()) / "pyrepl3" / "key"))
        exclude = set(checkpoint_exclude or ())
        exclude |= {n.strip() for n in env.get("PYREPL3_CHECKPOINT_EXCLUDE", "").split(",") if n.strip()}
        max_bytes = int(float_setting(env, "PYREPL3_CHECKPOINT_MAX_BYTES", float(checkpoint_max_bytes or 0))) or None
        lock = SessionLock(home_path, session).acquire(wait=float_setting(env, "PYREPL3_LOCK_WAIT", 3.0))
        runtime: DurableRuntime | None = None
        try:
            path = store_path(home_path)
            pid = uuid.uuid4().hex
            store = EmbeddedStore(path, session, pid=pid)
            catalog = Catalog(path)
            checkpointer = Checkpointer(
                BlobStore(home_path / "blobs"), exclude=exclude, size_limit=max_bytes, hidden={"durable"}
            )
            dispatcher = CellDispatcher()
            runtime = DurableRuntime(store, session=session, dispatcher=dispatcher, pid=pid, ttl=ttl).start()
            checkpoints = NamespaceCheckpoints(runtime, checkpointer, signer, session, lambda: catalog.checkpoints(session))
        except BaseException:
            if runtime is not None:
                runtime.stop()
            lock.release()
            raise
        prompts = PromptBroker(
            runtime,
            timeout=input_timeout,
            answer_command=answer_command(env.get("PYREPL3_HOME") or home or None),
        )
        log.info("durable session %r on %s", session, path)
        return cls(
            session,
            home_path,
            path,
            lock,
            store,
            runtime,
            dispatcher,
            start_timeout,
            prompts,
            StepJournal(runtime),
            store.interrupted_executions(),
            auto_resume,
            resume_limit,
            checkpoints,
        )

    def catalog(self) -> Catalog:
        return Catalog(self.store_path)

    def close(self) -> None:
        self.runtime.stop()
        self.store.close()
        self.lock.release()
