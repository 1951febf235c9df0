"""The embedded engine: a file-backed Resonate server that lives inside the kernel.

Why not ``LocalConnection``: it keeps everything in memory (nothing survives a
``kill -9``), its ``ServerState`` scans every promise on many requests (so a cell
gets slower as history grows), and ``Resonate`` gives it a no-op heartbeat.

What this is instead: the SDK's own ``ServerState`` state machine (so the
protocol semantics are the SDK's, not a re-implementation) holding only the
*live* part of the history -- pending promises, unfinished tasks and the
lineages they belong to -- in front of a SQLite database (WAL,
``synchronous=NORMAL``: every applied request is committed before its response
is returned, which survives a process crash). Settled lineages are written
through and evicted from memory, so the per-request cost depends on what is in
flight, not on how many cells ran before. Requests for ids that are no longer
in memory page them back in from disk first.

A write that fails (the file locked by another writer past the busy timeout,
read-only, full) *breaks* the store: the request fails with
:class:`~kernel.core.errors.StoreUnavailableError` (inside the SDK's
``ConnectorError``), every later request too, and :attr:`EmbeddedStore.broken`
says why. The in-memory state may then be ahead of the file, so it is never
used again: the kernel turns durability off and reconnects with a new store
read from the file, which holds exactly what was committed.

One kernel owns a session's rows at a time (see :mod:`kernel.store.embedded.locks`).
Other processes -- the CLI answering a prompt, say -- never write a live
session's promises directly; they append a request to the ``inbox`` table,
which the owning store applies through its state machine within a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec
from resonate.connections.local import DurablePromise, ServerState, Task, unwrap_request_envelope, wrap_response_envelope
from resonate.timing import now_ms

from resonate_base.error import ConnectorError

from kernel.core.errors import StoreError, StoreUnavailableError
from kernel.core.ids import kind_of
from kernel.store.batches import FulfilledLater
from kernel.store.embedded.requests import referenced_ids
from kernel.store.embedded.database import checkpoint_and_close, connect, decode_promise, store_error, decode_task, LISTED_SQL, listed_row, promise_row, promise_sig, task_row, task_sig

log = logging.getLogger(__name__)

SCHEME = "pyrepl3"
PENDING_RETRY_MS = 30_000


class EmbeddedStore:
    """A Resonate ``Network`` and ``Source`` backed by a SQLite file.

    ``session`` names the rows this store owns; the caller must hold that
    session's lock. ``clock`` and ``tick_interval`` are seams for tests, as in
    the SDK's own connections. The constructor touches nothing; :meth:`open`
    opens the file and loads the session's unfinished work.
    """

    def __init__(
        self,
        path: Path,
        session: str,
        *,
        pid: str = "kernel",
        group: str = "pyrepl3",
        clock: Callable[[], int] = now_ms,
        tick_interval: float = 0.1,
        fsync: bool = False,
        setting: str = "PYREPL3_HOME",
    ) -> None:
        """``setting`` names where ``path`` came from, for messages (PYREPL3_HOME or PYREPL3_STORE)."""
        self.path = Path(path)
        self.setting = setting
        #: Why this store stopped taking requests (a write failed), or None while it works.
        self.broken: StoreUnavailableError | None = None
        self.session = session
        self._pid = pid
        self._group = group
        self._clock = clock
        self._tick_interval = tick_interval
        self._fsync = fsync
        self._db_conn: sqlite3.Connection | None = None
        self.state = ServerState()
        self._saved: dict[str, tuple[Any, ...]] = {}
        self._saved_tasks: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[str], None]] = []
        self._tick_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Requests left in the inbox before this start are applied too.
        self._inbox_seq = 0
        #: Executions a batch settled whose task the SDK fulfills afterwards.
        self._fulfilled_later = FulfilledLater()

    def open(self) -> EmbeddedStore:
        """Open the database (:class:`StoreCorruptError` if it is not one of ours) and load the live session."""
        if self._db_conn is None:
            self._db_conn = connect(self.path, fsync=self._fsync, setting=self.setting)
            try:
                self._load_live()
            except sqlite3.Error as exc:
                self.close()
                raise store_error(self.path, self.setting, exc) from exc
        return self

    @property
    def _db(self) -> sqlite3.Connection:
        if self._db_conn is None:
            raise StoreError(f"the embedded store {self.path} is not open (call open() first)")
        return self._db_conn

    # -- Source -----------------------------------------------------------

    def unicast(self) -> str:
        return f"{SCHEME}://uni@{self._group}/{self._pid}"

    def resolve_target(self, target: str) -> str:
        return f"{SCHEME}://any@{target}"

    def recv(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._tick_task is None:
            self._tick_task = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        task, self._tick_task = self._tick_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscribers.clear()

    def close(self) -> None:
        db, self._db_conn = self._db_conn, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                checkpoint_and_close(db)

    # -- Network ----------------------------------------------------------

    async def send(self, req: str, headers: dict[str, str] | None = None) -> str:
        flat = unwrap_request_envelope(msgspec.json.decode(req))
        try:
            response, outgoing = self.apply(flat)
        except StoreUnavailableError as exc:
            raise ConnectorError(exc) from None
        self._dispatch(outgoing)
        return msgspec.json.encode(wrap_response_envelope(response)).decode()

    def apply(self, flat: Any) -> tuple[dict[str, Any], list[Any]]:
        """Apply one flat request: page in, run the state machine, write through, evict.

        Raises :class:`StoreUnavailableError` when the file cannot be written (and from then on)."""
        with self._lock, self._writing():
            if (done := self._fulfilled_later.reply(flat)) is not None:
                return done, []
            self._page_in(referenced_ids(flat))
            self.state.outgoing = []
            response = self.state.apply(self._clock(), flat)
            outgoing, self.state.outgoing = self.state.outgoing, []
            self._flush()
            return response, outgoing

    def apply_batch(self, flats: list[Any], *, fulfilled_later: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Apply flat requests as one unit, from any thread: one lock, one transaction
        (a durable step is created and settled in one write, without a trip to the
        runtime's loop). Push messages, if any, go out on the loop as usual.
        ``fulfilled_later``: executions settled here whose task the SDK still holds; its
        fulfill of that task is answered as done (:mod:`kernel.durable.inline`)."""
        outgoing: list[Any] = []
        with self._lock, self._writing():
            self._page_in([pid for flat in flats for pid in referenced_ids(flat)])
            responses = []
            for flat in flats:
                self.state.outgoing = []
                responses.append(self.state.apply(self._clock(), flat))
                outgoing.extend(self.state.outgoing)
            self.state.outgoing = []
            self._flush()
            self._fulfilled_later.add(fulfilled_later, responses)
        if outgoing and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, outgoing)
        return responses

    @contextlib.contextmanager
    def _writing(self):  # type: ignore[no-untyped-def]
        """Refuse once broken; a failed SQLite call breaks the store (see the module docstring)."""
        if self.broken is not None:
            raise self.broken
        try:
            yield
        except sqlite3.Error as exc:
            error = store_error(self.path, self.setting, exc)
            if not isinstance(error, StoreUnavailableError):
                error = StoreUnavailableError(str(error))
            self.broken = error
            log.warning("the embedded store stopped taking requests: %s", error)
            raise error from exc

    # -- persistence ------------------------------------------------------

    def _load_live(self) -> None:
        """Load this session's unfinished work, releasing leases of dead owners.

        The caller holds the session lock, so any task still marked acquired was
        leased by a process that is gone: it goes back to pending and is
        re-delivered on the first tick instead of one lease later.
        """
        now = self._clock()
        rows = self._db.execute(
            "SELECT record FROM promises WHERE session = ? AND state = 'pending'", (self.session,)
        ).fetchall()
        branches = set()
        for (blob,) in rows:
            p = decode_promise(blob)
            self._adopt_promise(p)
            if b := p.tags.get("resonate:branch"):
                branches.add(b)
        for branch in branches:
            for (blob,) in self._db.execute(
                "SELECT record FROM promises WHERE branch = ? AND state != 'pending'", (branch,)
            ):
                self._adopt_promise(decode_promise(blob))
        for (blob,) in self._db.execute(
            "SELECT record FROM tasks WHERE session = ? AND state != 'fulfilled'", (self.session,)
        ):
            t = decode_task(blob)
            if t.state == "acquired":
                t.state, t.version, t.pid, t.ttl = "pending", t.version + 1, None, None
            self._adopt_task(t, now, redeliver_now=True)
        self._flush()

    def interrupted_executions(self) -> list[str]:
        """``exec:`` promises of this session still pending at load: their kernel died."""
        with self._lock:
            pending = [p for p in self.state.promises.values() if p.state == "pending" and kind_of(p.id) == "exec"]
        return [p.id for p in sorted(pending, key=lambda p: p.created_at)]

    def _adopt_promise(self, p: DurablePromise) -> None:
        self.state.promises[p.id] = p
        self._saved[p.id] = promise_sig(p)
        if p.state == "pending" and "resonate:target" in p.tags:
            self.state.set_p_timeout(p.id, p.timeout_at)

    def _adopt_task(self, t: Task, now: int, *, redeliver_now: bool = False) -> None:
        self.state.tasks[t.id] = t
        self._saved_tasks[t.id] = ("loaded",)  # forces a write if it changed on load
        if t.state == "pending":
            self.state.set_t_timeout(t.id, 0, now if redeliver_now else now + PENDING_RETRY_MS)
        elif t.state == "acquired":
            self.state.set_t_timeout(t.id, 1, now + (t.ttl or 60_000))

    def _page_in(self, ids: Iterable[str]) -> None:
        for pid in dict.fromkeys(ids):  # a batch's create and settle name one id: looked up once
            if pid in self.state.promises:
                continue
            row = self._db.execute("SELECT record FROM promises WHERE id = ?", (pid,)).fetchone()
            if row is None:
                continue
            p = decode_promise(row[0])
            self._adopt_promise(p)
            trow = self._db.execute("SELECT record FROM tasks WHERE id = ?", (pid,)).fetchone()
            if trow is not None:
                t = decode_task(trow[0])
                self._adopt_task(t, self._clock())
                self._saved_tasks[t.id] = task_sig(t)
            if p.state == "pending" and (b := p.tags.get("resonate:branch")) and b != p.id:
                self._page_in([b])

    def _flush(self) -> None:
        """Write what changed in one transaction, then evict settled lineages."""
        promise_rows, listed_rows, promise_sigs = [], [], {}
        for pid, p in self.state.promises.items():
            sig = promise_sig(p)
            if self._saved.get(pid) != sig:
                promise_rows.append(promise_row(self.session, p))
                if (listed := listed_row(self.session, p)) is not None:
                    listed_rows.append(listed)
                promise_sigs[pid] = sig
        task_rows, task_sigs = [], {}
        for tid, t in self.state.tasks.items():
            sig = task_sig(t)
            if self._saved_tasks.get(tid) != sig:
                task_rows.append(task_row(self.session, t))
                task_sigs[tid] = sig
        if promise_rows or task_rows:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO promises VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                    "state=excluded.state, settled_at=excluded.settled_at, record=excluded.record",
                    promise_rows,
                )
                if listed_rows:
                    self._db.executemany(LISTED_SQL, listed_rows)
                if task_rows:
                    self._db.executemany(
                        "INSERT INTO tasks VALUES (?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                        "state=excluded.state, record=excluded.record",
                        task_rows,
                    )
            # Only now are they on disk (a failed commit leaves them to be written again).
            self._saved.update(promise_sigs)
            self._saved_tasks.update(task_sigs)
        self._evict()

    @contextlib.contextmanager
    def _transaction(self):  # type: ignore[no-untyped-def]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    def _evict(self) -> None:
        promises, tasks = self.state.promises, self.state.tasks
        live_branches = {
            p.tags.get("resonate:branch", p.id)
            for p in promises.values()
            if p.state == "pending" or p.awaiters or p.subscribers
        }
        live_branches |= {t.id for t in tasks.values() if t.state != "fulfilled"}
        for pid in [
            pid
            for pid, p in promises.items()
            if p.state != "pending"
            and not p.awaiters
            and not p.subscribers
            and p.tags.get("resonate:branch", pid) not in live_branches
            and pid not in live_branches
        ]:
            del promises[pid]
            self._saved.pop(pid, None)
            if (t := tasks.get(pid)) is not None and t.state == "fulfilled":
                del tasks[pid]
                self._saved_tasks.pop(pid, None)

    # -- time and the inbox ------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            try:
                self._dispatch(self.tick())
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError:
                pass  # said once, when it broke; the kernel reconnects with a new store
            except Exception:
                log.exception("embedded store tick failed")
            await asyncio.sleep(self._tick_interval)

    def tick(self) -> list[Any]:
        """Fire due timeouts and apply requests other processes left in the inbox."""
        if self.broken is not None:
            raise self.broken
        outgoing: list[Any] = []
        with self._writing():
            inbox = self._db.execute(
                "SELECT seq, request FROM inbox WHERE session = ? AND seq > ? ORDER BY seq",
                (self.session, self._inbox_seq),
            ).fetchall()
        for seq, request in inbox:
            try:
                _, out = self.apply(msgspec.json.decode(request))
                outgoing.extend(out)
            except StoreUnavailableError:
                raise  # not applied: it stays in the inbox for the next store
            except Exception:
                log.exception("could not apply inbox request %s", seq)
            self._inbox_seq = seq
            with self._writing():
                self._db.execute("DELETE FROM inbox WHERE seq = ?", (seq,))
        with self._lock, self._writing():
            self.state.outgoing = []
            self.state.tick(self._clock())
            outgoing.extend(self.state.outgoing)
            self.state.outgoing = []
            self._flush()
        return outgoing

    def _dispatch(self, messages: list[Any]) -> None:
        """Deliver push messages on the next loop turn, off the request's path
        (as the SDK's own connections do, so a callback never re-enters send)."""
        if not messages or not self._subscribers:
            return
        texts = [msgspec.json.encode(m.message).decode() for m in messages]
        subscribers = list(self._subscribers)

        def deliver() -> None:
            for text in texts:
                for cb in subscribers:
                    cb(text)

        asyncio.get_running_loop().call_soon(deliver)
