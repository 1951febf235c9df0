"""The embedded engine: the SQLite store under a home directory, one kernel per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resonate_base.connections import Network, Source

from kernel.core.errors import ConfigurationError
from kernel.core.models import PromiseRecord
from kernel.core.locations import EngineSpec, store_path
from kernel.store.claims import Claims
from kernel.store.embedded.blobs import FileBlobStore
from kernel.store.embedded.catalog import EmbeddedCatalog
from kernel.store.embedded.locks import FlockSessionLock
from kernel.store.embedded.outside import settle_from_outside
from kernel.store.embedded.reclaim import EmbeddedReclaimer
from kernel.store.embedded.store import EmbeddedStore
from kernel.store.modes import PRIVATE


class EmbeddedEngine:
    """The SQLite store under ``home`` (or under the path ``PYREPL3_STORE`` names)."""

    def __init__(self, spec: EngineSpec, home: Path, *, fsync: bool = False) -> None:
        """``fsync`` (PYREPL3_FSYNC): survive power loss too (SQLite synchronous=FULL, fsynced blobs)."""
        self.spec = spec
        self.home = Path(spec.target).expanduser() if spec.target else home
        self.fsync = fsync
        self.path = store_path(self.home)
        #: The setting the store's place came from, named in every error about it.
        self.setting = spec.setting if spec.target else "PYREPL3_HOME"
        self._store: EmbeddedStore | None = None
        # Readers handed out; closed with the engine so a clean shutdown leaves no WAL behind.
        self._catalogs: list[EmbeddedCatalog] = []

    def open(self) -> EmbeddedEngine:
        if self.home.exists() and not self.home.is_dir():
            raise ConfigurationError(f"{self.spec.setting} points at {self.home}, which is not a directory")
        return self

    @property
    def where(self) -> Path:
        return self.path

    def group(self, session: str) -> str:
        return "pyrepl3"

    def lock(self, session: str, wait: float = 0.0) -> FlockSessionLock:
        return FlockSessionLock(self.home, session, setting=self.setting).acquire(wait=wait)

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        self._store = EmbeddedStore(self.path, session, pid=pid, fsync=self.fsync, setting=self.setting).open()
        return self._store, None

    def worker_network(self, group: str, pid: str, claims: Claims | None = None) -> tuple[Network, list[Source] | None]:
        # The embedded store is one kernel's SQLite file and in-process state machine:
        # no other process can take tasks from it.
        raise ConfigurationError(
            f"remote workers need a store every machine can share, and {self.spec.setting} is the embedded store "
            f"at {self.path}; set {self.spec.setting}=postgresql://... (or a Resonate server's URL) for the kernel and its workers"
        )

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        # The store released the dead owner's leases when it loaded the session.
        return self._store.interrupted_executions() if self._store is not None else []

    def catalog(self) -> EmbeddedCatalog:
        catalog = EmbeddedCatalog(self.path, setting=self.setting).open()
        self._catalogs = [c for c in self._catalogs if c.is_open] + [catalog]
        return catalog

    def blobs(self) -> FileBlobStore:
        return FileBlobStore(self.home / "blobs", fsync=self.fsync, modes=PRIVATE).open()

    def reclaimer(self) -> EmbeddedReclaimer:
        return EmbeddedReclaimer(self.path, fsync=self.fsync, setting=self.setting)

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> PromiseRecord:
        return settle_from_outside(self.home, self.path, promise_id, state, data, wait=wait, setting=self.setting)

    def healthy(self) -> bool:
        """False once a write failed (locked past the busy timeout, read-only, full): see ``EmbeddedStore.broken``."""
        return self._store is None or self._store.broken is None

    def close(self) -> None:
        """Close the readers, then the writer, which folds the WAL into ``store.sqlite3``."""
        catalogs, self._catalogs = self._catalogs, []
        for catalog in catalogs:
            catalog.close()
        if self._store is not None:
            self._store.close()
            self._store = None


__all__ = ["EmbeddedEngine"]
