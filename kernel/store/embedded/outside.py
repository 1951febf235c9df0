"""Settling a promise from a process that does not own its session (the CLI).

If no kernel holds the session, this process takes the session lock and applies
the settle through the store's state machine itself. If a kernel is live, the
request goes into the ``inbox`` table, and the kernel's store applies it within
a tick -- so the kernel's in-memory state and the file never disagree.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

import msgspec

from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import PyRepl3Error
from kernel.core.models import PromiseRecord
from kernel.store.embedded.catalog import EmbeddedCatalog
from kernel.store.embedded.database import connect, store_error
from kernel.store.embedded.locks import FlockSessionLock
from kernel.store.embedded.store import EmbeddedStore
from kernel.store.protocol import encode_value

#: Seconds between looks at the store while waiting for the owner to apply a settle.
POLL_INTERVAL = 0.02


def settle_request(promise_id: str, state: str, data: Any) -> dict[str, Any]:
    """A flat ``promise.settle`` request as the state machine takes it."""
    return {
        "kind": "promise.settle",
        "corrId": f"outside-{uuid.uuid4().hex}",
        "id": promise_id,
        "state": state,
        "value": encode_value(data),
    }


def settle_from_outside(
    home: Path,
    store_file: Path,
    promise_id: str,
    state: str,
    data: Any,
    *,
    wait: float = 5.0,
    clock: Clock = SYSTEM,
    setting: str = "PYREPL3_HOME",
) -> PromiseRecord:
    """Settle ``promise_id`` and return its record once the store shows it settled
    (``setting``: where the store's place came from, for messages)."""
    catalog = EmbeddedCatalog(store_file, setting=setting).open()
    try:
        record = catalog.promise(promise_id)
        if record is None:
            raise PyRepl3Error(f"no promise {promise_id!r} in the store {store_file}")
        if record["state"] != "pending":
            raise PyRepl3Error(f"{promise_id} is already {record['state']}; nothing was changed")
        session = record["session"]
        assert session is not None
        request = settle_request(promise_id, state, data)
        lock = FlockSessionLock(home, session, clock=clock, setting=setting)
        if lock.try_acquire():
            try:
                store = EmbeddedStore(store_file, session, setting=setting).open()
                try:
                    store.apply(request)
                finally:
                    store.close()
            finally:
                lock.release()
        else:
            db = connect(store_file, setting=setting)
            try:
                db.execute("INSERT INTO inbox (session, request) VALUES (?, ?)", (session, msgspec.json.encode(request).decode()))
            except sqlite3.Error as exc:
                raise store_error(store_file, setting, exc) from exc
            finally:
                db.close()

        def settled() -> PromiseRecord | None:
            found = catalog.promise(promise_id)
            return found if found is not None and found["state"] != "pending" else None

        settled_record = clock.wait_for(settled, wait, interval=POLL_INTERVAL)
        if settled_record is None:
            raise PyRepl3Error(
                f"the kernel owning session {session!r} did not apply the answer to {promise_id} within {wait:g}s; "
                "it stays queued and will be applied when that kernel next runs"
            )
        return settled_record
    finally:
        catalog.close()
