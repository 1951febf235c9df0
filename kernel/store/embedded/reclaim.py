"""The embedded engine's side of reclaiming space (:class:`kernel.store.base.Reclaimer`).

A connection of its own on the store file: deleting checkpoint rows takes SQLite's write
lock for one short transaction, as any writer does, so it is safe while a kernel writes
(the kernel's own store never holds a settled checkpoint in memory after writing it).
Deleted rows free pages inside the file for the next writes; :meth:`compact` folds the
write-ahead log into the file and cuts it back (``journal_size_limit``), so the WAL is
checkpointed whenever garbage collection runs, not only at a clean shutdown.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from kernel.core.errors import StoreError
from kernel.store.embedded.database import connect, store_error


class EmbeddedReclaimer:
    """Pins, deletions and the WAL of the store file at ``path``."""

    def __init__(self, path: Path, *, fsync: bool = False, setting: str = "PYREPL3_HOME") -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.setting = setting
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None

    def _db(self, write: bool) -> sqlite3.Connection:
        """A read-only connection until something is written (a dry run writes nothing at all)."""
        if write or self._conn is not None:
            if self._conn is None:
                self._conn = connect(self.path, fsync=self.fsync, setting=self.setting)
            return self._conn
        if self._reader is None:
            self._reader = connect(self.path, readonly=True, setting=self.setting)
        return self._reader

    @contextlib.contextmanager
    def _sql(self, *, write: bool = False):  # type: ignore[no-untyped-def]
        """The connection (inside one immediate transaction when writing), SQLite's errors as the store's."""
        try:
            db = self._db(write)
            if not write:
                yield db
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise store_error(self.path, self.setting, exc, writing=write) from exc

    def checkpoint_sessions(self) -> list[str]:
        if not self.path.exists():
            return []
        with self._sql() as db:
            return [s for (s,) in db.execute("SELECT DISTINCT session FROM promises WHERE kind = 'checkpoint'").fetchall()]

    def pins(self, session: str) -> dict[int, int | None]:
        if not self._has("pins"):
            return {}
        with self._sql() as db:
            return dict(db.execute("SELECT seq, execution_count FROM pins WHERE session = ?", (session,)).fetchall())

    def _has(self, table: str) -> bool:
        """Whether the file has ``table`` (one no kernel of this version has written to yet has not)."""
        if not self.path.exists():
            return False
        with self._sql() as db:
            return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None

    def pin(self, session: str, seq: int, execution_count: int | None) -> None:
        with self._sql(write=True) as db:
            db.execute("INSERT OR REPLACE INTO pins VALUES (?, ?, ?)", (session, seq, execution_count))

    def unpin(self, session: str, seq: int) -> bool:
        with self._sql(write=True) as db:
            return db.execute("DELETE FROM pins WHERE session = ? AND seq = ?", (session, seq)).rowcount > 0

    def delete_checkpoints(self, session: str, deleted: Sequence[tuple[str, int | None]], at: float) -> int:
        if not deleted:
            return 0
        with self._sql(write=True) as db:
            gone = 0
            for pid, count in deleted:
                gone += db.execute(
                    "DELETE FROM promises WHERE id = ? AND session = ? AND kind = 'checkpoint'", (pid, session)
                ).rowcount
                db.execute("DELETE FROM tasks WHERE id = ?", (pid,))
                db.execute("INSERT OR REPLACE INTO reclaimed VALUES (?, ?, ?, ?)", (session, pid, count, at))
            return gone

    def note_reclaimed(self, session: str, noted: Sequence[tuple[str, int | None]], at: float) -> None:
        with self._sql(write=True) as db:
            db.executemany("INSERT OR REPLACE INTO reclaimed VALUES (?, ?, ?, ?)", [(session, pid, count, at) for pid, count in noted])

    def reclaimed(self, session: str, execution_count: int) -> float | None:
        if not self._has("reclaimed"):
            return None
        with self._sql() as db:
            row = db.execute(
                "SELECT max(at) FROM reclaimed WHERE session = ? AND execution_count = ?", (session, execution_count)
            ).fetchone()
        return row[0] if row else None

    def note_output_blobs(self, session: str, execution_id: str, digests: Sequence[str]) -> None:
        with self._sql(write=True) as db:
            db.executemany("INSERT OR IGNORE INTO output_blobs VALUES (?, ?, ?)", [(session, execution_id, d) for d in digests])

    def output_blobs(self) -> set[str]:
        if not self._has("output_blobs"):
            return set()
        with self._sql() as db:
            return {d for (d,) in db.execute("SELECT DISTINCT digest FROM output_blobs").fetchall()}

    def compact(self) -> None:
        """``wal_checkpoint(TRUNCATE)``: a reader in the middle of a read leaves part of the WAL
        for the next time (it stays valid), which is not an error."""
        try:
            self._db(True).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise store_error(self.path, self.setting, exc) from exc

    def footprint(self) -> dict[str, int]:
        """The store file and its write-ahead log."""
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                size += self.path.with_name(self.path.name + suffix).stat().st_size
        return {"records": size}

    def close(self) -> None:
        for conn in (self._conn, self._reader):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, StoreError):
                    conn.close()
        self._conn = self._reader = None


__all__ = ["EmbeddedReclaimer"]
