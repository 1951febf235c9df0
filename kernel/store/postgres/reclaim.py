"""The Postgres engine's side of reclaiming space (:class:`kernel.store.base.Reclaimer`).

Checkpoint records are rows of ``resonate.promises`` (resonate-pg cascades their
tasks, callbacks and listeners) with their ``pyrepl3.promises`` index rows; both go in
one transaction with the note that they were reclaimed. Postgres hands freed rows back
to the table (autovacuum); the files shrink only with ``VACUUM FULL``, an
administrator's call, so :meth:`compact` does nothing here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from kernel.store.postgres.link import PgLink, unreachable


class PgReclaimer:
    """Pins and deletions over the engine's :class:`PgLink` (shared, serialised by its lock)."""

    def __init__(self, link: PgLink) -> None:
        self.link = link

    @contextlib.contextmanager
    def _conn(self, *, write: bool = False) -> Iterator[psycopg.Connection[Any]]:
        with self.link.lock:
            try:
                conn = self.link.conn
                if write:
                    with conn.transaction():
                        yield conn
                else:
                    yield conn
            except psycopg.OperationalError as exc:
                raise unreachable(self.link.dsn, exc, self.link.setting) from None

    def checkpoint_sessions(self) -> list[str]:
        with self._conn() as conn:
            return [s for (s,) in conn.execute("SELECT DISTINCT session FROM pyrepl3.promises WHERE kind = 'checkpoint'").fetchall()]

    def pins(self, session: str) -> dict[int, int | None]:
        with self._conn() as conn:
            return dict(conn.execute("SELECT seq, execution_count FROM pyrepl3.pins WHERE session = %s", (session,)).fetchall())

    def pin(self, session: str, seq: int, execution_count: int | None) -> None:
        with self._conn(write=True) as conn:
            conn.execute(
                "INSERT INTO pyrepl3.pins VALUES (%s, %s, %s) ON CONFLICT (session, seq) DO UPDATE SET execution_count = excluded.execution_count",
                (session, seq, execution_count),
            )

    def unpin(self, session: str, seq: int) -> bool:
        with self._conn(write=True) as conn:
            return conn.execute("DELETE FROM pyrepl3.pins WHERE session = %s AND seq = %s", (session, seq)).rowcount > 0

    def delete_checkpoints(self, session: str, deleted: Sequence[tuple[str, int | None]], at: float) -> int:
        if not deleted:
            return 0
        ids = [pid for pid, _count in deleted]
        with self._conn(write=True) as conn:
            mine = [r[0] for r in conn.execute(
                "DELETE FROM pyrepl3.promises WHERE id = ANY(%s) AND session = %s AND kind = 'checkpoint' RETURNING id", (ids, session)
            ).fetchall()]
            conn.execute("DELETE FROM resonate.promises WHERE id = ANY(%s)", (mine,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO pyrepl3.reclaimed VALUES (%s, %s, %s, %s) ON CONFLICT (session, id) DO UPDATE SET at = excluded.at",
                    [(session, pid, count, at) for pid, count in deleted],
                )
        return len(mine)

    def note_reclaimed(self, session: str, noted: Sequence[tuple[str, int | None]], at: float) -> None:
        with self._conn(write=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pyrepl3.reclaimed VALUES (%s, %s, %s, %s) ON CONFLICT (session, id) DO UPDATE SET at = excluded.at",
                [(session, pid, count, at) for pid, count in noted],
            )

    def reclaimed(self, session: str, execution_count: int) -> float | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT max(at) FROM pyrepl3.reclaimed WHERE session = %s AND execution_count = %s", (session, execution_count)
            ).fetchone()
        return row[0] if row else None

    def note_output_blobs(self, session: str, execution_id: str, digests: Sequence[str]) -> None:
        with self._conn(write=True) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO pyrepl3.output_blobs VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(session, execution_id, d) for d in digests],
            )

    def output_blobs(self) -> set[str]:
        with self._conn() as conn:
            return {d for (d,) in conn.execute("SELECT DISTINCT digest FROM pyrepl3.output_blobs").fetchall()}

    def compact(self) -> None:
        """Nothing to do: see the module docstring."""

    def footprint(self) -> dict[str, int]:
        """What the tables take on disk (dead rows included until autovacuum reuses them)."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT pg_total_relation_size('resonate.promises') + pg_total_relation_size('pyrepl3.promises'), "
                "pg_total_relation_size('pyrepl3.blobs') + pg_total_relation_size('pyrepl3.blob_chunks')"
            ).fetchone()
        assert row is not None
        return {"records": int(row[0]), "blob tables": int(row[1])}

    def close(self) -> None:
        """The link belongs to the engine."""


__all__ = ["PgReclaimer"]
