"""The Postgres engine's synchronous side: connecting, the schema, one link per kernel.

resonate-pg is an SQL schema (``resonate``) whose stored procedures *are* the
Resonate protocol. PyREPL3 adds a small schema of its own, ``pyrepl3``, in the
same database:

``pyrepl3.promises``     an index of the promises kernels create (id, session,
                         kind, time). resonate-pg has no ``promise.search``;
                         the index row is written in the same statement as the
                         promise itself, so the two never disagree.
``pyrepl3.sessions``     who holds a session (for the "in use by" message).
``pyrepl3.blobs`` and    checkpoint blobs, chunked (see :mod:`kernel.store.postgres.blobs`).
``pyrepl3.blob_chunks``

Every message that names the database goes through :func:`kernel.core.redaction.redact`
/ :func:`kernel.core.redaction.scrub`: a DSN's password never reaches a log or a cell.
"""

from __future__ import annotations

import contextlib
import select
import threading
from typing import Any

import msgspec
import psycopg
import psycopg.conninfo

from kernel.core.errors import AuthenticationError, EngineConnectionError, StoreError
from kernel.core.redaction import redact, scrub
from kernel.store.protocol import envelope, one_line

SCHEMA_VERSION = 3
#: Seconds to wait for a connection (connect, or a free pooled one) before the
#: engine counts as unreachable.
DEFAULT_TIMEOUT = 5.0

DDL = """
CREATE TABLE IF NOT EXISTS pyrepl3.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS pyrepl3.promises (
    id text PRIMARY KEY,
    session text NOT NULL,
    kind text NOT NULL,
    created_at bigint NOT NULL
);
-- 2: the terminal state once seen (the http engine's promises live on the server).
ALTER TABLE pyrepl3.promises ADD COLUMN IF NOT EXISTS state text;
CREATE INDEX IF NOT EXISTS promises_by_session ON pyrepl3.promises (session, kind, created_at);
CREATE INDEX IF NOT EXISTS promises_by_kind ON pyrepl3.promises (kind, created_at);
CREATE TABLE IF NOT EXISTS pyrepl3.sessions (
    session text PRIMARY KEY,
    owner text NOT NULL,
    since bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS pyrepl3.blobs (
    digest text PRIMARY KEY,
    size bigint NOT NULL,
    chunks integer NOT NULL,
    created_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS pyrepl3.blob_chunks (
    digest text NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (digest, seq)
);
-- Pickles and array buffers rarely compress; don't spend CPU trying (TOAST, no pglz).
ALTER TABLE pyrepl3.blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
-- Checkpoints a user pinned (%durable keep N), and a note of each one garbage collection deleted.
CREATE TABLE IF NOT EXISTS pyrepl3.pins (
    session text NOT NULL, seq bigint NOT NULL, execution_count integer, PRIMARY KEY (session, seq)
);
CREATE TABLE IF NOT EXISTS pyrepl3.output_blobs (
    session text NOT NULL, execution text NOT NULL, digest text NOT NULL, PRIMARY KEY (execution, digest)
);
CREATE TABLE IF NOT EXISTS pyrepl3.reclaimed (
    session text NOT NULL, id text NOT NULL, execution_count integer, at double precision NOT NULL, PRIMARY KEY (session, id)
);
INSERT INTO pyrepl3.meta VALUES ('schema', '3') ON CONFLICT (key) DO UPDATE SET value = excluded.value;
"""

RPC_SQL = "SELECT resonate.resonate_rpc(%s::text::jsonb)::text"


#: The setting a DSN comes from, when the caller does not say.
STORE_SETTING = "PYREPL3_STORE"
#: SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification.
_AUTH_STATES = {"28P01", "28000"}


def _user_of(dsn: str) -> str:
    try:
        return psycopg.conninfo.conninfo_to_dict(dsn).get("user") or "(default user)"
    except psycopg.Error:
        return "(unknown user)"


def unreachable(dsn: str, exc: BaseException, setting: str = STORE_SETTING) -> EngineConnectionError | AuthenticationError:
    """The error for a failed request: RES005 when the server refused the login (not worth
    retrying: the setting must change), else RES004. Names the setting; never the password."""
    detail = scrub(one_line(exc), dsn)
    if getattr(exc, "sqlstate", None) in _AUTH_STATES or "authentication failed" in detail:
        return AuthenticationError(
            f"authentication failed for {setting} (user {_user_of(dsn)!r}, the Postgres engine at {redact(dsn)}): {detail}"
        )
    return EngineConnectionError(f"the Postgres engine at {redact(dsn)} is unreachable (set by {setting}): {detail}")


def connect(dsn: str, *, timeout: float = DEFAULT_TIMEOUT, setting: str = STORE_SETTING) -> psycopg.Connection[Any]:
    """An autocommit connection, or RES004/RES005 saying why not."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=max(2, int(timeout)))
    except psycopg.Error as exc:
        raise unreachable(dsn, exc, setting) from None


def ensure_schema(conn: psycopg.Connection[Any], dsn: str, *, resonate: bool = True) -> None:
    """Check that resonate-pg is installed (unless ``resonate`` is false: a
    database that only holds blobs and the index); create PyREPL3's own schema if missing."""
    try:
        row = conn.execute(
            "SELECT to_regprocedure('resonate.resonate_rpc(jsonb)') IS NOT NULL, to_regclass('pyrepl3.meta') IS NOT NULL"
        ).fetchone()
        assert row is not None
        has_resonate, has_ours = row
        if resonate and not has_resonate:
            msg = (
                f"the database at {redact(dsn)} has no resonate-pg schema (resonate.resonate_rpc is missing); "
                "apply resonate.sql from https://github.com/resonatehq/resonate-pg to it first"
            )
            raise StoreError(msg)
        if has_ours:
            version = conn.execute("SELECT value FROM pyrepl3.meta WHERE key = 'schema'").fetchone()
            if version is not None and int(version[0]) > SCHEMA_VERSION:
                msg = f"the pyrepl3 schema at {redact(dsn)} has version {version[0]}; this PyREPL3 reads up to {SCHEMA_VERSION}"
                raise StoreError(msg)
            if version is not None and int(version[0]) == SCHEMA_VERSION:
                return
        with conn.transaction():
            # Two kernels creating the schema at once would race on the catalogs.
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('pyrepl3:schema', 0))")
            # An administrator may have made the schema for a role without CREATE on the database.
            if conn.execute("SELECT to_regnamespace('pyrepl3') IS NULL").fetchone()[0]:  # type: ignore[index]
                conn.execute("CREATE SCHEMA pyrepl3")
            conn.execute(DDL)
    except psycopg.OperationalError as exc:
        raise unreachable(dsn, exc) from None
    except psycopg.Error as exc:
        msg = f"cannot set up PyREPL3's schema in the database at {redact(dsn)}: {scrub(one_line(exc), dsn)}"
        raise StoreError(msg) from None


class PgLink:
    """The kernel's synchronous connection: session lock, catalog reads, blob I/O.

    One connection for the three keeps a kernel at a handful of backends
    (this one, the LISTEN connection, a small pool for the runtime). psycopg
    connections serialize their own use, so sharing across threads is safe.
    The constructor does not connect; :meth:`open` does.
    """

    def __init__(self, dsn: str, *, timeout: float = DEFAULT_TIMEOUT, setting: str = STORE_SETTING) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.setting = setting
        self._conn: psycopg.Connection[Any] | None = None
        self.lock = threading.RLock()

    def open(self, *, schema: bool = False, resonate: bool = True) -> PgLink:
        """Connect; with ``schema``, also :func:`ensure_schema` (closing again if that fails)."""
        if self._conn is None:
            self._conn = connect(self.dsn, timeout=self.timeout, setting=self.setting)
        if schema:
            try:
                ensure_schema(self._conn, self.dsn, resonate=resonate)
            except BaseException:
                self.close()
                raise
        return self

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise EngineConnectionError(f"the Postgres engine at {redact(self.dsn)} is not connected (call open() first)")
        return self._conn

    @property
    def broken(self) -> bool:
        """True once the connection is known to be gone. Costs no round trip:
        an idle connection whose socket turned readable has either a message
        or an end of stream waiting, and reading it tells which."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return True
        if not self.lock.acquire(blocking=False):
            return False  # in use right now: whoever uses it will find out
        try:
            for _ in range(4):  # e.g. a termination notice, then the end of stream
                readable, _, _ = select.select([conn.fileno()], [], [], 0)
                if not readable:
                    break
                conn.pgconn.consume_input()
        except (OSError, ValueError, psycopg.OperationalError):
            return True
        finally:
            self.lock.release()
        return conn.pgconn.status != psycopg.pq.ConnStatus.OK

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def rpc(conn: psycopg.Connection[Any], kind: str, data: dict[str, Any]) -> tuple[int, Any]:
    """One resonate-pg protocol request on a synchronous connection: (status, data)."""
    row = conn.execute(RPC_SQL, (msgspec.json.encode(envelope(kind, data)).decode(),)).fetchone()
    assert row is not None
    response = msgspec.json.decode(row[0])
    return int(response["head"]["status"]), response.get("data")


__all__ = ["DEFAULT_TIMEOUT", "PgLink", "connect", "ensure_schema", "rpc", "unreachable"]
