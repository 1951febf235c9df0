"""Engines: selection, redaction, faults and leases; Postgres across machines.

The Postgres tests run real kernels against a real resonate-pg database
(``PYREPL3_TEST_PG_DSN``) and are skipped, with the reason, without one. The
fault tests take the database away from a kernel with a TCP relay (defined
here) that they cut and restore.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from harness import TIMEOUT, KernelFactory, Store, cli, cli_json, executions, kernel_env, show, wait_for

from kernel.durable import hitl
from kernel.core.locations import resolve_blobs, resolve_engine
from kernel.core.redaction import redact, scrub
from kernel.core.errors import ConfigurationError, EngineConnectionError
from kernel.core.settings import Settings
from kernel.store.embedded.engine import EmbeddedEngine
from kernel.store.registry import open_engine

SECRET = "s3cr3t-pw-" + uuid.uuid4().hex[:8]


def exec_id(msg_id: str) -> str:
    return f"exec:{msg_id}"


def dead_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_netloc(dsn: str, *, host: str | None = None, port: int | None = None, password: str | None = None) -> str:
    parts = urlsplit(dsn)
    user = parts.username or ""
    pw = password if password is not None else parts.password
    userinfo = f"{user}:{pw}@" if pw else (f"{user}@" if user else "")
    return urlunsplit(
        (parts.scheme, f"{userinfo}{host or parts.hostname}:{port or parts.port or 5432}", parts.path, parts.query, "")
    )


# -- engine selection and redaction (no database) --------------------------------------


def _s(env: dict[str, str], store: str = "") -> Settings:
    """The settings a kernel would have with this environment and ``DurableKernel.store``."""
    return Settings.load(env, {"store": store} if store else {})


def test_one_setting_selects_the_engine(tmp_path: Path) -> None:
    assert resolve_engine(_s({})).kind == "embedded"
    spec = resolve_engine(_s({"PYREPL3_STORE": str(tmp_path)}))
    assert (spec.kind, spec.target) == ("embedded", str(tmp_path))
    for dsn in ("postgresql://u@db/x", "postgres://u@db/x", "POSTGRESQL://u@db/x"):
        assert resolve_engine(_s({"PYREPL3_STORE": dsn})).kind == "postgres"
    for url in ("http://resonate:8001", "https://resonate.example.com"):
        assert resolve_engine(_s({"PYREPL3_STORE": url})).kind == "http"
    # The environment wins over the traitlet, and says which setting it came from.
    traitlet = resolve_engine(_s({}, "postgresql://u@db/x"))
    assert (traitlet.kind, traitlet.setting) == ("postgres", "DurableKernel.store")
    env = resolve_engine(_s({"PYREPL3_STORE": "https://r"}, "postgresql://u@db/x"))
    assert (env.kind, env.setting) == ("http", "PYREPL3_STORE")
    with pytest.raises(ConfigurationError, match="unknown engine scheme 'redis'") as err:
        resolve_engine(_s({"PYREPL3_STORE": f"redis://u:{SECRET}@h/0"}))
    assert SECRET not in str(err.value) and "PYREPL3_STORE" in str(err.value)
    # A path selects the embedded store in that directory.
    engine = open_engine(_s({"PYREPL3_STORE": str(tmp_path / "elsewhere")}))
    assert isinstance(engine, EmbeddedEngine) and engine.where == tmp_path / "elsewhere" / "store.sqlite3"
    engine.close()
    assert resolve_blobs(_s({})) is None
    assert resolve_blobs(_s({"PYREPL3_BLOBS": "/shared/blobs"})).kind == "directory"  # type: ignore[union-attr]
    assert resolve_blobs(_s({"PYREPL3_BLOBS": "postgresql://h/db"})).kind == "postgres"  # type: ignore[union-attr]


def test_credentials_are_redacted() -> None:
    dsn = f"postgresql://alice:{SECRET}@db.internal:5432/pyrepl3?sslmode=require&password={SECRET}x"
    shown = redact(dsn)
    assert SECRET not in shown
    assert shown.startswith("postgresql://alice:***@db.internal:5432/pyrepl3?") and "sslmode=require" in shown
    assert redact(f"https://resonate.example?token={SECRET}") == "https://resonate.example?token=***"
    assert redact("/a/plain/path") == "/a/plain/path"
    # Drivers echo a bad connection string in their errors; scrub takes it out.
    message = f'invalid dsn: missing "=" after "{dsn}" in connection info string (password {SECRET})'
    assert SECRET not in scrub(message, dsn)
    encoded = "postgresql://bob:p%40ss%2Fword@h/db"
    assert "p@ss/word" not in scrub("auth failed for p@ss/word", encoded)


def test_unreachable_engines_raise_res004_without_credentials(tmp_path: Path) -> None:
    port = dead_port()
    with pytest.raises(EngineConnectionError) as err:
        open_engine(_s({"PYREPL3_STORE": f"postgresql://alice:{SECRET}@127.0.0.1:{port}/db", "PYREPL3_ENGINE_TIMEOUT": "2"}))
    text = str(err.value)
    assert text.startswith("[RES004]") and f"alice:***@127.0.0.1:{port}" in text and SECRET not in text
    with pytest.raises(EngineConnectionError) as err:
        open_engine(_s({"PYREPL3_STORE": f"http://bob:{SECRET}@127.0.0.1:{port}", "PYREPL3_BLOBS": str(tmp_path)}))
    assert "[RES004]" in str(err.value) and SECRET not in str(err.value)
    with pytest.raises(ConfigurationError, match="needs PYREPL3_BLOBS") as cfg:
        open_engine(_s({"PYREPL3_STORE": f"https://bob:{SECRET}@resonate.example"}))
    assert SECRET not in str(cfg.value)


def test_kernel_runs_without_an_unreachable_engine_and_says_why(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    port = dead_port()
    dsn = f"postgresql://alice:{SECRET}@127.0.0.1:{port}/db"
    log = tmp_path / "kernel.log"
    env = kernel_env(home, "offline", PYREPL3_STORE=dsn, PYREPL3_RECONNECT_SECONDS="1", PYREPL3_ENGINE_TIMEOUT="2")
    k = kernels.start(env=env, log=log)
    run = k.ok("print(6 * 7)")
    assert run.stream("stdout") == "42\n"
    notice = run.stream("stderr")
    assert f"PyREPL3: durability is off: [RES004] the Postgres engine at postgresql://alice:***@127.0.0.1:{port}/db is unreachable" in notice
    assert "reconnect" in notice
    time.sleep(2.5)  # reconnect attempts fail quietly
    again = k.ok("x = 1\nprint(x)")
    assert again.stream("stdout") == "1\n" and "durability" not in again.stream("stderr")
    assert "durability is off" in k.ok("%durable").stream("stdout")
    proc = cli(home, "executions", check=False, store=Store("postgres", dsn))
    assert proc.returncode == 2 and "[RES004]" in proc.stderr and "alice:***@" in proc.stderr
    k.close()
    for text in (notice, again.stream("stderr"), proc.stdout, proc.stderr, log.read_text()):
        assert SECRET not in text


# -- leases ------------------------------------------------------------------------------


@pytest.mark.engines("embedded", "postgres")
def test_a_cell_longer_than_the_lease_runs_once(kernels: KernelFactory, home: Path, tmp_path: Path, store: Store) -> None:
    side_effect = tmp_path / "ran.txt"
    k = kernels.start(env=kernel_env(home, "lease", PYREPL3_LEASE_SECONDS="2"))
    msg_id = k.send_execute(f"import time\nopen({str(side_effect)!r}, 'a').write('ran\\n')\ntime.sleep(6)\nprint('done')")
    beats = []
    if store.shared:
        import psycopg

        with psycopg.connect(store.dsn, autocommit=True) as db:
            for _ in range(5):
                time.sleep(1)
                row = db.execute("SELECT state, version, ttl, timeout_at FROM resonate.tasks WHERE id = %s", (exec_id(msg_id),)).fetchone()
                beats.append(row)
    run = k.collect(msg_id, timeout=TIMEOUT)
    assert run.content["status"] == "ok" and run.stream("stdout") == "done\n"
    assert side_effect.read_text() == "ran\n", "the cell ran exactly once"
    assert show(home, exec_id(msg_id))["state"] == "resolved"
    if store.shared:
        import psycopg

        assert all(b is not None and b[0] == "acquired" and b[1] == 1 and b[2] == 2000 for b in beats), beats
        assert beats[-1][3] > beats[0][3] + 2000, "the heartbeat extended the lease while the cell ran"
        with psycopg.connect(store.dsn, autocommit=True) as db:
            state, version = db.execute("SELECT state, version FROM resonate.tasks WHERE id = %s", (exec_id(msg_id),)).fetchone()
        assert (state, version) == ("fulfilled", 1), "acquired once: never re-delivered"
    assert k.ok("print('still fine')").stream("stdout") == "still fine\n"


# -- Postgres: across machines --------------------------------------------------------------


def machine(root: Path, name: str) -> dict[str, Path]:
    """The directories one 'machine' has of its own: home, working dir, Jupyter and IPython dirs."""
    dirs = {k: root / name / k for k in ("home", "cwd", "data", "ipython")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


@pytest.mark.engines("postgres")
def test_a_session_moves_to_another_machine(kernels: KernelFactory, tmp_path: Path, store: Store) -> None:
    key = "a-key-every-machine-shares-" + uuid.uuid4().hex
    m1, m2, m3 = (machine(tmp_path, n) for n in ("m1", "m2", "m3"))

    def env(m: dict[str, Path]) -> dict[str, str]:
        return kernel_env(m["home"], "roaming", PYREPL3_KEY=key, JUPYTER_DATA_DIR=str(m["data"]), IPYTHONDIR=str(m["ipython"]),
                          PYREPL3_HEADLESS_INPUT="wait")

    k1 = kernels.start(env=env(m1), cwd=m1["cwd"], home=m1["home"])
    first = k1.ok("import os\nstarted_in = os.getcwd()\ncounter = 41")
    k1.ok("counter += 1")
    asking = k1.send_execute("answer = input('which machine? ')", allow_stdin=False)
    # A third machine sees the prompt and answers it: on Postgres the CLI settles
    # the promise in the database; the kernel picks the answer up from there.
    pending = wait_for(lambda: cli_json(m3["home"], "pending"), what="the prompt, seen from another machine")
    assert [p["id"] for p in pending] == [f"exec:{asking}:input:1"] and pending[0]["session"] == "roaming"
    assert "resolved" in cli(m3["home"], "answer", pending[0]["id"], "machine three").stdout
    assert k1.collect(asking).content["status"] == "ok"
    k1.kill9()

    k2 = kernels.start(env=env(m2), cwd=m2["cwd"], home=m2["home"])
    run = k2.ok("print(counter, answer, started_in == os.getcwd())")
    assert run.stream("stdout") == "42 machine three False\n"
    assert run.stream("stderr") == ""
    assert "namespace of execution 3 is back" in k2.ok("%durable").stream("stdout")
    history = executions(m3["home"], "roaming")
    assert exec_id(first.msg_id) in history and exec_id(asking) in history and exec_id(run.msg_id) in history
    assert {r["state"] for r in history.values()} == {"resolved"}
    table = k2.ok("%durable executions").of_type("display_data")[0]["content"]["data"]["text/plain"]
    assert exec_id(first.msg_id) in table and exec_id(asking) in table


@pytest.mark.engines("postgres")
def test_approval_from_elsewhere_through_the_python_api(kernels: KernelFactory, home: Path, store: Store) -> None:
    k = kernels.start("approvals")
    msg_id = k.send_execute("d = durable.approve('Deploy?', details={'rows': 7})\nprint(d.approved, d.reason)")
    session = store.session("approvals")
    waiting = wait_for(lambda: hitl.pending(session=session, store=store.dsn), what="the approval request")
    assert waiting[0]["kind"] == "approval" and waiting[0]["details"] == {"rows": 7}
    hitl.approve(waiting[0]["id"], "ship it", store=store.dsn)
    run = k.collect(msg_id)
    assert run.stream("stdout") == "True ship it\n"
    assert hitl.pending(session=session, store=store.dsn) == []


@pytest.mark.engines("postgres")
def test_second_kernel_on_a_live_postgres_session(kernels: KernelFactory, home: Path, store: Store) -> None:
    a = kernels.start("shared")
    a.ok("x = 1")
    b = kernels.start("shared", home=home.parent / "other-home")
    run = b.ok("print('b')")
    notice = run.stream("stderr")
    assert f"durability is off: session {store.session('shared')!r} is in use by a live kernel (pid {a.pid} on {socket.gethostname()})" in notice
    assert "PYREPL3_SESSION" in notice
    assert exec_id(run.msg_id) not in executions(home, "shared")


# -- Postgres: credentials, signatures, blobs, secrets -------------------------------------


def dsn_with_password(dsn: str) -> tuple[str, str]:
    """The test DSN with a password in it (the given one, or a canary when the
    server trusts local connections), and that password."""
    import psycopg

    parts = urlsplit(dsn)
    if parts.password:
        return dsn, parts.password
    candidate = with_netloc(dsn, password=SECRET)
    try:
        psycopg.connect(candidate, connect_timeout=5).close()
    except psycopg.Error:
        pytest.skip("the test database wants a password the DSN does not carry")
    return candidate, SECRET


@pytest.mark.engines("postgres")
def test_the_password_is_never_shown(kernels: KernelFactory, home: Path, tmp_path: Path, store: Store) -> None:
    dsn, password = dsn_with_password(store.dsn)
    secret_store = Store("postgres", dsn, store.ns)
    log = tmp_path / "kernel.log"
    k = kernels.start(env=kernel_env(home, "creds", store=secret_store, PYREPL3_HEADLESS_INPUT="wait"), log=log)
    texts = []
    magic = k.ok("x = 1\n%durable")
    texts += [magic.stream("stdout"), magic.stream("stderr")]
    assert "store:   postgres engine at " + redact(dsn) in magic.stream("stdout")
    asking = k.send_execute("input('anyone? ')", allow_stdin=False)
    pending = wait_for(lambda: cli_json(home, "pending", store=secret_store), what="the prompt")
    run_hint = cli(home, "answer", pending[0]["id"], "me", store=secret_store)
    answered = k.collect(asking)
    texts += [answered.stream("stderr"), run_hint.stdout, run_hint.stderr]
    assert "pyrepl3 --store" in answered.stream("stderr") and redact(dsn) in answered.stream("stderr")
    for args in (["sessions"], ["executions"], ["show", exec_id(asking)], ["pending"], ["show", "exec:nope"]):
        proc = cli(home, *args, check=False, store=secret_store)
        texts += [proc.stdout, proc.stderr]
    k.close()
    texts.append(log.read_text())
    for text in texts:
        assert password not in text


@pytest.mark.engines("postgres")
@pytest.mark.parametrize("tamper", ["wrong signature", "unsigned", "other key"])
def test_tampered_checkpoints_are_refused_on_postgres(kernels: KernelFactory, home: Path, store: Store, tamper: str) -> None:
    import psycopg

    k = kernels.start("tamper")
    k.ok("secret_plan = 'original'")
    k.close()
    env = kernel_env(home, "tamper")
    if tamper == "other key":
        env["PYREPL3_KEY"] = "a-different-key"
    else:
        with psycopg.connect(store.dsn, autocommit=True) as db:
            [(pid, data)] = db.execute(
                "SELECT p.id, p.value_data FROM pyrepl3.promises i JOIN resonate.promises p ON p.id = i.id "
                "WHERE i.session = %s AND i.kind = 'checkpoint'",
                (store.session("tamper"),),
            ).fetchall()
            value = json.loads(base64.b64decode(data))
            if tamper == "unsigned":
                del value["signature"]
            else:
                value["manifest"]["skipped"] = {"injected": "by an attacker"}
            forged = base64.b64encode(json.dumps(value).encode()).decode()
            db.execute("UPDATE resonate.promises SET value_data = %s WHERE id = %s", (forged, pid))
    fresh = kernels.start(env=env)
    run = fresh.ok("print('secret_plan' in dir())")
    assert run.stream("stdout") == "False\n"
    message = run.stream("stderr")
    assert "not restored" in message and "refusing to load it" in message and "ckpt:" in message, message


@pytest.mark.engines("postgres")
def test_a_corrupted_blob_in_postgres_is_reported_and_the_rest_restored(kernels: KernelFactory, home: Path, store: Store) -> None:
    import numpy as np
    import psycopg

    fill = float(int(uuid.uuid4().int % 10**6)) + 0.5  # content no other test has
    k = kernels.start("corrupt-blob")
    k.ok(f"import numpy as np\ngood = list(range(10))\nbad = np.full(50_000, {fill})")
    k.kill9()
    digest = hashlib.sha256(np.full(50_000, fill).tobytes()).hexdigest()
    with psycopg.connect(store.dsn, autocommit=True) as db:
        changed = db.execute(
            "UPDATE pyrepl3.blob_chunks SET data = overlay(data PLACING '\\xffffffffffffffffffff'::bytea FROM 101 FOR 10) "
            "WHERE digest = %s AND seq = 0",
            (digest,),
        ).rowcount
    assert changed == 1
    fresh = kernels.start("corrupt-blob")
    run = fresh.ok("print(good, 'bad' in dir())")
    assert run.stream("stdout") == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] False\n"
    assert "skipped bad:" in run.stream("stderr") and "corrupt" in run.stream("stderr")


@pytest.mark.engines("postgres")
def test_postgres_blob_store(store: Store) -> None:
    """The Postgres blob store keeps the file store's contract (put/get/has/size, batches, corruption)."""
    from kernel.core.errors import StoreError
    from kernel.store.base import BlobCorruptError, BlobMissingError
    from kernel.store.digests import digest_of
    from kernel.store.postgres.link import PgLink
    from kernel.store.postgres.blobs import PgBlobStore

    link = PgLink(store.dsn).open(schema=True)
    try:
        blobs = PgBlobStore(link, chunk_size=1000)
        data = uuid.uuid4().bytes * 300  # 4800 bytes: 5 chunks
        digest = blobs.put(memoryview(data))
        assert digest == digest_of(data) and blobs.has(digest) and blobs.size(digest) == len(data)
        assert bytes(blobs.get(digest)) == data and blobs.put(data) == digest
        assert blobs.put_many([data, b""]) == [(digest, 0), (digest_of(b""), 0)]
        other = uuid.uuid4().bytes * 10
        with pytest.raises(RuntimeError), blobs.batch():
            blobs.put(other)
            raise RuntimeError("the batch fails: nothing in it is kept")
        assert not blobs.has(digest_of(other))
        with pytest.raises(BlobMissingError):
            blobs.get(digest_of(other))
        with pytest.raises(StoreError, match="not a blob digest"):
            blobs.get("../../etc/passwd")
        with link.conn.transaction():
            link.conn.execute("UPDATE pyrepl3.blob_chunks SET data = 'x'::bytea WHERE digest = %s AND seq = 2", (digest,))
        [problem] = blobs.open_buffers([digest])
        assert isinstance(problem, BlobCorruptError) and "short read" in str(problem)
        assert not blobs.has(digest), "a corrupt blob is dropped, so the next checkpoint writes it again"
        assert blobs.put(data) == digest and bytes(blobs.get(digest)) == data
    finally:
        link.close()


@pytest.mark.engines("postgres")
def test_large_values_round_trip_through_postgres_blobs(kernels: KernelFactory, home: Path) -> None:
    k = kernels.start("big")
    k.ok("import numpy as np\nbig = np.arange(3_000_000, dtype=np.float64)\ntotal = float(big.sum())")  # 24 MB: 6 chunks
    k.kill9()
    again = kernels.start("big")
    run = again.ok("print(big.shape, float(big.sum()) == total, big.flags.writeable)")
    assert run.stream("stdout") == "(3000000,) True True\n"


@pytest.mark.engines("postgres")
def test_a_getpass_secret_never_reaches_the_database(kernels: KernelFactory, home: Path, store: Store) -> None:
    import psycopg

    secret = "hunter2-" + uuid.uuid4().hex
    started = int(time.time() * 1000) - 1000
    k = kernels.start("getpass")
    msg_id = k.send_execute("import getpass\npw = getpass.getpass('password? ')\nprint(len(pw))", allow_stdin=True)
    assert k.kc.get_stdin_msg(timeout=TIMEOUT)["content"]["password"] is True
    k.kc.input(secret)
    assert k.collect(msg_id).stream("stdout") == f"{len(secret)}\n"
    k.ok("pass")  # a checkpoint after the secret is in the namespace
    with psycopg.connect(store.dsn, autocommit=True) as db:
        values = db.execute(
            "SELECT coalesce(param_data, '') || ' ' || coalesce(value_data, '') FROM resonate.promises WHERE id LIKE %s OR created_at >= %s",
            (f"exec:{msg_id}%", started),
        ).fetchall()
        decoded = " ".join(base64.b64decode(part).decode(errors="replace") for (v,) in values for part in v.split() if part)
        in_blobs = db.execute(
            "SELECT count(*) FROM pyrepl3.blob_chunks c JOIN pyrepl3.blobs b ON b.digest = c.digest "
            "WHERE b.created_at >= %s AND position(%s::bytea IN c.data) > 0",
            (started, secret.encode()),
        ).fetchone()[0]
    assert decoded and secret not in decoded
    assert in_blobs == 0


# -- Postgres: the engine goes away and comes back --------------------------------------------


class TcpRelay:
    """A local TCP relay to the database that a test can cut and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = dead_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-relay", daemon=True)
        self._thread.start()

    def dsn(self, dsn: str) -> str:
        return with_netloc(dsn, host="127.0.0.1", port=self.port)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def up(self) -> None:
        self._call(self._up())

    async def _up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    def cut(self) -> None:
        """Refuse new connections and drop every open one (the database is 'gone')."""
        self._call(self._cut())

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def close(self) -> None:
        self.cut()

        async def settle() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._call(settle())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def relay(store: Store) -> Any:
    parts = urlsplit(store.dsn)
    r = TcpRelay((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield r
    r.close()


def keep_running_until(k: Any, text: str, timeout: float = TIMEOUT) -> list[Any]:
    """Run ``pass`` cells until ``%durable`` lists the notice ``text``; return the runs."""
    runs: list[Any] = []

    def seen() -> bool:
        runs.append(k.ok("pass"))
        return text in k.ok("%durable").stream("stdout")

    wait_for(seen, timeout=timeout, interval=0.5, what=f"a cell saying {text!r}")
    return runs


@pytest.mark.engines("postgres")
def test_engine_lost_mid_session_then_back(
    kernels: KernelFactory, home: Path, tmp_path: Path, relay: TcpRelay, store: Store
) -> None:
    relay.up()
    env = kernel_env(home, "flaky", PYREPL3_STORE=relay.dsn(store.dsn), PYREPL3_RECONNECT_SECONDS="1", PYREPL3_ENGINE_TIMEOUT="2")
    k = kernels.start(env=env)
    before = [k.ok("a = 1"), k.ok("a += 1")]
    # The cell runs until the test has cut the engine (a file appears), so it is
    # seen pending however slow the CLI is, and finishes while the engine is away.
    gate = tmp_path / "engine-is-cut"
    inflight = k.send_execute(
        f"import os, time\ndeadline = time.monotonic() + {2 * TIMEOUT:g}\n"
        f"while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:\n    time.sleep(0.05)\n"
        "b = 'made while the engine went away'\nprint(b)"
    )
    wait_for(lambda: executions(home, "flaky").get(exec_id(inflight), {}).get("state") == "pending", what="the cell to start")
    relay.cut()
    gate.touch()
    mid = k.collect(inflight)
    assert mid.content["status"] == "ok" and mid.stream("stdout") == "made while the engine went away\n"
    offline = k.ok("print('offline', a)")
    assert offline.stream("stdout") == "offline 2\n", "the kernel keeps executing code"
    # Said once: in the cell whose outcome could not be stored (the engine failed under it),
    # or, if the engine's failure was seen only then, in the next cell.
    notice = mid.stream("stderr") + offline.stream("stderr")
    assert "durability is off" in notice and "[RES004]" in notice and "reconnect" in notice, notice
    assert notice.count("durability is off") == 1, notice
    still = k.ok("a += 10")
    relay.up()
    runs = keep_running_until(k, "durability is back on")
    said = k.ok("%durable").stream("stdout")
    assert "the namespace was not restored, since cells ran while durability was off" in said, "what ran meanwhile is kept"
    assert f"{exec_id(inflight)} finished while the engine was away; its outcome is stored now" in said, said
    assert all(r.stream("stderr") == "" for r in runs), "a reconnect that worked is no cell output"
    after = k.ok("print(a)")
    assert after.stream("stdout") == "12\n" and after.stream("stderr") == ""
    rows = executions(home, "flaky")
    for run in before:
        assert rows[exec_id(run.msg_id)]["state"] == "resolved", "nothing settled before is lost"
    assert rows[exec_id(after.msg_id)]["state"] == "resolved", "durable again"
    stored = show(home, exec_id(inflight))
    assert stored["state"] == "resolved", "the cell that finished during the outage is stored with its outcome"
    assert stored["value"]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "made while the engine went away\n"}]
    assert exec_id(offline.msg_id) not in rows and exec_id(still.msg_id) not in rows


@pytest.mark.engines("postgres")
def test_engine_unreachable_at_start_then_back(kernels: KernelFactory, home: Path, relay: TcpRelay, store: Store) -> None:
    first = kernels.start("late")
    first.ok("kept = 'from the first kernel'")
    first.close()
    env = kernel_env(home, "late", PYREPL3_STORE=relay.dsn(store.dsn), PYREPL3_RECONNECT_SECONDS="1", PYREPL3_ENGINE_TIMEOUT="2")
    k = kernels.start(env=env)  # the relay is down: nothing listens on its port
    # The session opens once kernel_info is answered; a silent request waits for that
    # attempt (and runs nothing durable), so the engine is surely down when it is made.
    k.execute("", silent=True)
    relay.up()

    # The keeper reconnects in the background. Wait for it without running a cell: a
    # silent request (no promise, no execution count) takes the new session up, and
    # its user_expressions show when the namespace is back.
    def namespace_back() -> bool:
        reply = k.execute("", silent=True, user_expressions={"kept": "kept"}).content
        return reply["user_expressions"]["kept"]["status"] == "ok"

    wait_for(namespace_back, interval=0.2, what="the kernel to reconnect and restore the namespace")
    run = k.ok("print(kept)")
    notice = run.stream("stderr")
    assert "durability is off: [RES004]" in notice and "durability is back on" not in notice, notice
    said = k.ok("%durable").stream("stdout")
    assert "durability is back on" in said, said
    assert "namespace of execution 1 is back" in said, "no cell had run: the namespace comes back"
    assert run.stream("stdout") == "from the first kernel\n"
    assert executions(home, "late")[exec_id(run.msg_id)]["state"] == "resolved"


# -- Postgres: recovery after kill -9 ----------------------------------------------------------


@pytest.mark.engines("postgres")
@pytest.mark.parametrize("auto_resume", [False, True], ids=["rejected", "resumed"])
def test_recovery_after_kill_9_does_not_wait_for_the_lease(
    kernels: KernelFactory, home: Path, tmp_path: Path, auto_resume: bool
) -> None:
    marker = tmp_path / "first-run"
    code = (
        "import os, time\n"
        f"if not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    time.sleep(600)\n"
        "print('finished')"
    )
    env = kernel_env(home, "crash", PYREPL3_LEASE_SECONDS="60", PYREPL3_AUTO_RESUME="1" if auto_resume else "0")
    k1 = kernels.start(env=env)
    k1.ok("x = 1")
    running = k1.send_execute(code)
    wait_for(marker.exists, what="the cell to start")
    k1.kill9()
    started = time.monotonic()
    k2 = kernels.start(env=env)
    if not auto_resume:
        k2.ok("pass")  # a new cell: the interrupted one is rejected
    rec = wait_for(lambda: (r := show(home, exec_id(running)))["state"] != "pending" and r, what="the interrupted execution settled")
    elapsed = time.monotonic() - started
    print(f"\nrecovery ({'resumed' if auto_resume else 'rejected'}): {elapsed:.2f}s from the new kernel's start (lease 60s)")
    assert elapsed < 30, "the dead kernel's lease was given back, not waited out"
    if auto_resume:
        assert rec["state"] == "resolved" and rec["value"]["outputs"][0]["text"] == "finished\n"
    else:
        assert rec["state"] == "rejected" and rec["error"]["ename"] == "KernelExitInterruption"


# -- a Resonate server over HTTP ---------------------------------------------------------------


class ResonateHttpFront:
    """A Resonate server's HTTP face -- ``POST /`` for requests, ``GET /poll/{group}/{pid}``
    for Server-Sent Events -- over resonate-pg, whose stored procedures *are* the protocol.
    No server binary is available here; this serves the real protocol state machine
    (resonate-pg) through the transport the SDK's HttpConnection/SSEConnection speak."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.port = dead_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="resonate-http", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        from aiohttp import web
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(self.dsn, min_size=1, max_size=8, open=False, kwargs={"autocommit": True})
        await self._pool.open(wait=True, timeout=10)
        app = web.Application()
        app.router.add_post("/", self._rpc)
        app.router.add_get("/poll/{group}/{pid}", self._poll)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)  # SSE streams never end by themselves
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _rpc(self, request: Any) -> Any:
        from aiohttp import web

        body = await request.text()
        async with self._pool.connection() as conn:
            row = await (await conn.execute("SELECT resonate.resonate_rpc(%s::text::jsonb)::text", (body,))).fetchone()
        return web.Response(text=row[0], content_type="application/json")

    async def _poll(self, request: Any) -> Any:
        from aiohttp import web
        from resonate_pg.wire import execute_message, unblock_message

        group, pid = request.match_info["group"], request.match_info["pid"]
        anycast, unicast = f"poll://any@{group}", f"poll://uni@{group}/{pid}"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                async with self._pool.connection() as conn:
                    await conn.execute("SELECT resonate.process_timeouts()")
                    out = []
                    for address in (anycast, unicast):
                        cur = await conn.execute("SELECT task_id, version FROM resonate.dequeue_execute(%s, 100)", (address,))
                        out += [execute_message(str(t), int(v)) for t, v in await cur.fetchall()]
                    cur = await conn.execute("SELECT promise::text FROM resonate.dequeue_unblock(%s, 100)", (unicast,))
                    out += [unblock_message(p) for (p,) in await cur.fetchall()]
                for msg in out:
                    await resp.write(f"data: {msg}\n\n".encode())
                await asyncio.sleep(0.05)
        except ConnectionError:  # the client went away
            return resp

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._pool.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(20)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def resonate_server(store: Store) -> Any:
    front = ResonateHttpFront(store.dsn)
    yield front
    front.close()


@pytest.mark.engines("postgres")
@pytest.mark.parametrize("blobs", ["directory", "postgres"])
def test_resonate_server_engine(
    kernels: KernelFactory, home: Path, tmp_path: Path, store: Store, resonate_server: ResonateHttpFront, blobs: str
) -> None:
    shared = str(tmp_path / "shared") if blobs == "directory" else store.dsn
    http = Store("http", resonate_server.url, store.ns, blobs=shared)
    env = kernel_env(home, "over-http", store=http, PYREPL3_HEADLESS_INPUT="wait")
    k = kernels.start(env=env)
    first = k.ok("import numpy as np\nvalues = np.arange(10)\nprint(values.sum())")
    assert first.stream("stdout") == "45\n" and first.stream("stderr") == ""
    assert "store:   http engine at " + resonate_server.url in k.ok("%durable").stream("stdout")
    asking = k.send_execute("name = input('name? ')", allow_stdin=False)
    pending = wait_for(lambda: cli_json(home, "pending", store=http), what="the prompt")
    assert [p["id"] for p in pending] == [f"exec:{asking}:input:1"]
    cli(home, "answer", pending[0]["id"], "over http", store=http)
    assert k.collect(asking).content["status"] == "ok"
    running = k.send_execute("import time\ntime.sleep(600)")
    wait_for(lambda: executions(home, "over-http", store=http).get(exec_id(running), {}).get("state") == "pending",
             what="the long cell to be stored as pending")
    k.kill9()
    again = kernels.start(env=env)
    run = again.ok("print(values.sum(), name)")
    assert run.stream("stdout") == "45 over http\n" and run.stream("stderr") == ""
    assert "namespace of execution" in again.ok("%durable").stream("stdout")
    interrupted = wait_for(lambda: (r := show(home, exec_id(running), store=http))["state"] != "pending" and r,
                           what="the interrupted execution settled")
    assert interrupted["error"]["ename"] == "KernelExitInterruption"
    rows = executions(home, "over-http", store=http)
    assert rows[exec_id(first.msg_id)]["state"] == "resolved" and rows[exec_id(run.msg_id)]["state"] == "resolved"
