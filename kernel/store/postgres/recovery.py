"""Recovery and answers on the Postgres engine, from synchronous code.

At kernel start (with the session lock held): which executions a dead kernel
of the session left pending, and giving back the leases it still holds. From
any process: settling a promise through resonate-pg's protocol -- the database
is the server, so no inbox is needed.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from kernel.store.postgres.link import PgLink, rpc
from kernel.store.protocol import acquired_by_other, encode_value

log = logging.getLogger(__name__)


def interrupted_executions(link: PgLink, session: str) -> list[str]:
    """``exec:`` promises of ``session`` still pending: their kernel died (the caller holds the lock)."""
    with link.lock:
        rows = link.conn.execute(
            "SELECT p.id FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
            "WHERE i.session = %s AND i.kind = 'exec' AND p.state = 'pending' ORDER BY p.created_at, p.id",
            (session,),
        ).fetchall()
    return [r[0] for r in rows]


def release_dead_leases(link: PgLink, execution_ids: list[str], pid: str) -> list[str]:
    """Give back tasks a dead kernel of this session still leases, so they are
    re-delivered now rather than when the lease runs out. The caller holds the
    session lock, so no live process owns them."""
    released = []
    with link.lock:
        for eid in execution_ids:
            task = acquired_by_other(*rpc(link.conn, "task.get", {"id": eid}), pid)
            if task is None:
                continue
            status, _ = rpc(link.conn, "task.release", {"id": eid, "version": task["version"]})
            if status == 200:
                released.append(eid)
    if released:
        log.info("released leases of a dead kernel: %s", ", ".join(released))
    return released


def settle(conn: psycopg.Connection[Any], promise_id: str, state: str, data: Any) -> int:
    """``promise.settle`` through the protocol; returns the status."""
    status, _ = rpc(conn, "promise.settle", {"id": promise_id, "state": state, "value": encode_value(data)})
    return status


__all__ = ["interrupted_executions", "release_dead_leases", "settle"]
