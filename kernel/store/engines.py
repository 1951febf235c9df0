"""One setting, three engines: what a durable session is built on.

``PYREPL3_STORE`` (or the traitlet ``DurableKernel.store``) is resolved by
:func:`kernel.core.settings.resolve_engine`; :func:`open_engine` turns the result into
an :class:`Engine`, which gives the session everything that depends on where
the state lives:

=====================  ==========================  ================================  ===============================
                       embedded (a path / nothing)  postgres (``postgresql://``)      http (``http(s)://``)
=====================  ==========================  ================================  ===============================
network + sources      :class:`EmbeddedStore`       :class:`PgNetwork` (resonate-pg)  ``HttpConnection`` + ``SSEConnection``
session lock           ``flock`` under home         advisory lock in the database     lock of the ``PYREPL3_BLOBS`` place
catalog (read side)    SQLite queries               index table joined to promises    index at ``PYREPL3_BLOBS`` + ``promise.get``
checkpoint blobs       files under home             ``pyrepl3`` schema, chunked       ``PYREPL3_BLOBS``: a shared dir or a DSN
settle from outside    inbox / direct               ``promise.settle`` (the DB *is*   ``promise.settle`` over HTTP
                                                    the server)
=====================  ==========================  ================================  ===============================

A kernel calls :meth:`Engine.network`, :meth:`Engine.lock`,
:meth:`Engine.interrupted_executions` and :meth:`Engine.blobs` once at start;
the CLI and ``%durable`` use :meth:`Engine.catalog` and
:meth:`Engine.settle_from_outside`. An engine that cannot be reached raises
:class:`~kernel.core.errors.EngineConnectionError` (RES004) with the DSN/URL redacted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from resonate_base.connections import Network, Source

from kernel.core.settings import EngineSpec, bool_setting, float_setting, redact, resolve_blobs, resolve_engine, resolve_home, store_path
from kernel.core.errors import ConfigurationError, PyRepl3Error
from kernel.core.ids import session_key


class Lock(Protocol):
    def release(self) -> None: ...


class Engine:
    """Base class; see the module docstring for what each engine provides."""

    spec: EngineSpec

    #: What ``%durable`` and messages show as the store (credentials redacted).
    @property
    def where(self) -> Path | str:
        return str(self.spec)

    def group(self, session: str) -> str:
        """The routing group of ``session``'s kernel: whoever listens on it gets its executions."""
        return "pyrepl3"

    def lock(self, session: str, wait: float = 0.0) -> Lock:
        raise NotImplementedError

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        raise NotImplementedError

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        """``exec:`` promises a dead kernel of ``session`` left pending, oldest first.
        Called with the session lock held, after :meth:`network`; leases the dead
        kernel still holds are given back so the engine re-delivers them now."""
        raise NotImplementedError

    def catalog(self) -> Any:
        raise NotImplementedError

    def blobs(self) -> Any:
        raise NotImplementedError

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> dict[str, Any]:
        raise NotImplementedError

    def healthy(self) -> bool:
        """False once the engine's connection is known to be lost (no I/O)."""
        return True

    def close(self) -> None:
        pass


# -- embedded ---------------------------------------------------------------------------


class EmbeddedEngine(Engine):
    """The SQLite store under ``home`` (or under the path ``PYREPL3_STORE`` names)."""

    def __init__(self, spec: EngineSpec, home: Path, *, fsync: bool = False) -> None:
        self.spec = spec
        self.home = Path(spec.target).expanduser() if spec.target else home
        #: PYREPL3_FSYNC: survive power loss too (SQLite synchronous=FULL, fsynced blobs).
        self._durability = {"fsync": True} if fsync else {}
        if self.home.exists() and not self.home.is_dir():
            raise ConfigurationError(f"{spec.setting} points at {self.home}, which is not a directory")
        self.path = store_path(self.home)
        self._store: Any = None

    @property
    def where(self) -> Path:
        return self.path

    def lock(self, session: str, wait: float = 0.0) -> Lock:
        from kernel.store.embedded.locks import SessionLock

        return SessionLock(self.home, session).acquire(wait=wait)

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        from kernel.store.embedded.store import EmbeddedStore

        self._store = EmbeddedStore(self.path, session, pid=pid, **self._durability)
        return self._store, None

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        # The store released the dead owner's leases when it loaded the session.
        return self._store.interrupted_executions() if self._store is not None else []

    def catalog(self) -> Any:
        from kernel.store.embedded.catalog import Catalog

        return Catalog(self.path)

    def blobs(self) -> Any:
        from kernel.store.embedded.blobs import BlobStore

        return BlobStore(self.home / "blobs", **self._durability)

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> dict[str, Any]:
        from kernel.store.embedded.outside import settle_from_outside

        return settle_from_outside(self.home, self.path, promise_id, state, data, wait=wait)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


# -- postgres ---------------------------------------------------------------------------


class PostgresEngine(Engine):
    """resonate-pg in a Postgres database: the engine every machine can share."""

    def __init__(self, spec: EngineSpec, *, timeout: float | None = None) -> None:
        from kernel.store.postgres.pg import DEFAULT_TIMEOUT, PgLink, ensure_schema

        self.spec = spec
        self.dsn = spec.target
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.link = PgLink(self.dsn, timeout=self.timeout)
        try:
            ensure_schema(self.link.conn, self.dsn)
        except BaseException:
            self.link.close()
            raise
        self._network: Any = None

    def group(self, session: str) -> str:
        # One group per session: the database is shared, and only this
        # session's kernel may pick up its executions.
        return f"pyrepl3-{session_key(session)}"

    def lock(self, session: str, wait: float = 0.0) -> Lock:
        from kernel.store.postgres.pg import PgSessionLock

        return PgSessionLock(self.link, session).acquire(wait=wait)

    def network(self, session: str, pid: str) -> tuple[Network, list[Source] | None]:
        from kernel.store.postgres.pg import PgNetwork

        self._network = PgNetwork(self.dsn, pid=pid, group=self.group(session), timeout=self.timeout)
        return self._network, None

    def interrupted_executions(self, session: str, pid: str) -> list[str]:
        from kernel.store.postgres.pg import interrupted_executions, release_dead_leases

        pending = interrupted_executions(self.link, session)
        release_dead_leases(self.link, pending, pid)
        return pending

    def catalog(self) -> Any:
        from kernel.store.postgres.pg import PgCatalog

        return PgCatalog(self.link)

    def blobs(self) -> Any:
        from kernel.store.postgres.blobs import PgBlobStore

        return PgBlobStore(self.link)

    def settle_from_outside(self, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> dict[str, Any]:
        """The database is the server: settle through resonate-pg's protocol, no inbox needed."""
        from kernel.store.postgres.pg import PgCatalog, settle, unreachable

        catalog = PgCatalog(self.link)
        record = catalog.promise(promise_id)
        if record is None:
            raise PyRepl3Error(f"no promise {promise_id!r} in the engine at {redact(self.dsn)}")
        if record["state"] != "pending":
            raise PyRepl3Error(f"{promise_id} is already {record['state']}; nothing was changed")
        try:
            with self.link.lock:
                status = settle(self.link.conn, promise_id, state, data)
        except Exception as exc:  # noqa: BLE001
            import psycopg

            if isinstance(exc, psycopg.OperationalError):
                raise unreachable(self.dsn, exc) from None
            raise
        if status != 200:
            raise PyRepl3Error(f"the engine refused to settle {promise_id} (status {status})")
        settled = catalog.promise(promise_id)
        assert settled is not None
        return settled

    def healthy(self) -> bool:
        return not self.link.broken

    def close(self) -> None:
        self.link.close()


# -- opening ---------------------------------------------------------------------------


def open_engine(
    env: Mapping[str, str] | None = None,
    *,
    store: str = "",
    home: str = "",
    timeout: float | None = None,
) -> Engine:
    """The engine ``PYREPL3_STORE`` / ``store`` selects (``home`` is the embedded default)."""
    import os

    env = os.environ if env is None else env
    spec = resolve_engine(env, store)
    if timeout is None:
        timeout = float_setting(env, "PYREPL3_ENGINE_TIMEOUT", 5.0) or 5.0
    if spec.kind == "embedded":
        return EmbeddedEngine(spec, resolve_home(env, home), fsync=bool_setting(env, "PYREPL3_FSYNC", False))
    if spec.kind == "postgres":
        return PostgresEngine(spec, timeout=timeout)
    from kernel.store.http.remote import HttpEngine

    return HttpEngine(spec, resolve_blobs(env), resolve_home(env, home), timeout=timeout, env=env)


@contextlib.contextmanager
def opened(env: Mapping[str, str] | None = None, *, store: str = "", home: str = "") -> Any:
    """``with opened(...) as engine:`` for one-shot users (the CLI, ``kernel.durable.hitl``)."""
    engine = open_engine(env, store=store, home=home)
    try:
        yield engine
    finally:
        engine.close()


__all__ = ["EmbeddedEngine", "Engine", "PostgresEngine", "open_engine", "opened"]
