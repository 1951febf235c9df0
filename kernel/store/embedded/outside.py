"""Settling a promise from a process that does not own its session (the CLI).

If no kernel holds the session, this process takes the session lock and applies
the settle through the store's state machine itself. If a kernel is live, the
request goes into the ``inbox`` table, and the kernel's store applies it within
a tick -- so the kernel's in-memory state and the file never disagree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
from resonate.codec import Codec, NoopEncryptor

from kernel.core.errors import PyRepl3Error
from kernel.store.embedded.catalog import Catalog
from kernel.store.embedded.store import EmbeddedStore, connect
from kernel.store.embedded.locks import SessionLock

_codec = Codec(NoopEncryptor())


def settle_request(promise_id: str, state: str, data: Any) -> dict[str, Any]:
    """A flat ``promise.settle`` request as the state machine takes it."""
    return {
        "kind": "promise.settle",
        "corrId": f"outside-{time.time_ns()}",
        "id": promise_id,
        "state": state,
        "value": msgspec.to_builtins(_codec.encode(data)),
    }


def settle_from_outside(home: Path, store_file: Path, promise_id: str, state: str, data: Any, *, wait: float = 5.0) -> dict[str, Any]:
    """Settle ``promise_id`` and return its record once the store shows it settled."""
    catalog = Catalog(store_file)
    try:
        record = catalog.promise(promise_id)
        if record is None:
            raise PyRepl3Error(f"no promise {promise_id!r} in the store {store_file}")
        if record["state"] != "pending":
            raise PyRepl3Error(f"{promise_id} is already {record['state']}; nothing was changed")
        session = record["session"]
        request = settle_request(promise_id, state, data)
        lock = SessionLock(home, session)
        if lock.try_acquire():
            try:
                store = EmbeddedStore(store_file, session)
                try:
                    store.apply(request)
                finally:
                    store.close()
            finally:
                lock.release()
        else:
            db = connect(store_file)
            try:
                db.execute("INSERT INTO inbox (session, request) VALUES (?, ?)", (session, msgspec.json.encode(request).decode()))
            finally:
                db.close()
        deadline = time.monotonic() + wait
        while True:
            record = catalog.promise(promise_id)
            if record is not None and record["state"] != "pending":
                return record
            if time.monotonic() >= deadline:
                raise PyRepl3Error(
                    f"the kernel owning session {session!r} did not apply the answer to {promise_id} within {wait:g}s; "
                    "it stays queued and will be applied when that kernel next runs"
                )
            time.sleep(0.02)
    finally:
        catalog.close()
