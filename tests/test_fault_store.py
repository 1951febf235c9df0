"""Fault suite: the embedded store at its edges (issue 10, points 5, 6b, 7, 11 (CLI), 12).

Faults are real: another process holding SQLite's write lock (``BEGIN IMMEDIATE``),
an immutable store file (``chattr +i``), a kernel run as another user
(``runuser -u nobody``), a full tmpfs, a damaged page, a umask of 022.
Each test counts its trials and failures and prints them.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import select
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import TIMEOUT, Kernel, KernelFactory, executions, kernel_env, wait_for

from kernel.cli.main import main as cli_main
from kernel.cli.render import Output
from kernel.store.embedded.blobs import FileBlobStore
from kernel.store.embedded.catalog import EmbeddedCatalog
from kernel.store.embedded.database import BUSY_TIMEOUT_MS
from kernel.store.embedded.locks import FlockSessionLock
from kernel.store.http.index import SqliteIndex
from kernel.store.modes import Modes

ROOT = os.geteuid() == 0
STORE = "store.sqlite3"
#: A cell may wait this long for the store: the busy timeout, then the reply.
CELL_WAIT = BUSY_TIMEOUT_MS / 1000 + TIMEOUT
#: The kernel tries to reconnect every second here (PYREPL3_RECONNECT_SECONDS).
FAST = {"PYREPL3_RECONNECT_SECONDS": "1"}

HOLDER = r"""
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT OR REPLACE INTO meta VALUES ('fault-holder', '1')")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


class WriteLock:
    """Another process in a SQLite write transaction on the store until :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        assert ready and self.proc.stdout.readline().strip() == "locked", "the lock holder did not take the lock"  # type: ignore[union-attr]

    def release(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=TIMEOUT)

    def __enter__(self) -> WriteLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def shutdown(kernel: Kernel) -> None:
    """A clean shutdown: shutdown_request, then wait for the process to exit."""
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)
    assert not kernel.km.is_alive()


def is_stored(home: Path, msg_id: str) -> bool:
    """``exec:<msg_id>`` is resolved in the store (read in process: the CLI's reads are tested below)."""
    catalog = EmbeddedCatalog(home / STORE).open()
    try:
        record = catalog.promise(f"exec:{msg_id}")
    finally:
        catalog.close()
    return record is not None and record["state"] == "resolved"


def until_durable_again(kernel: Kernel, home: Path, timeout: float = 60.0) -> str:
    """Run cells until one is stored again (the kernel reconnects by itself); its msg_id."""

    def one() -> str | None:
        run = kernel.ok("pass")
        return run.msg_id if is_stored(home, run.msg_id) else None

    return wait_for(one, timeout=timeout, interval=0.5, what="durability to come back")


def notice_of(run: object) -> str:
    return run.stream("stderr")  # type: ignore[attr-defined]


# -- point 5: a store that opens but cannot be written never hangs a cell ------------------


def test_a_write_lock_shorter_than_the_busy_timeout_is_waited_for(
    kernels: KernelFactory, home: Path, fault_trials: int, fault_rng: random.Random
) -> None:
    kernel = kernels.start()
    kernel.ok("n = 0")
    store = home / STORE
    problems = []
    for i in range(fault_trials):
        hold = fault_rng.uniform(0.05, 1.0)
        lock = WriteLock(store)
        timer = threading.Timer(hold, lock.release)
        timer.start()
        try:
            run = kernel.execute(f"n = {i + 1}", timeout=CELL_WAIT)
        finally:
            timer.join()
            lock.release()
        if run.content["status"] != "ok" or "durability is off" in notice_of(run) or not is_stored(home, run.msg_id):
            problems.append((i, hold, run.content, notice_of(run)))
    assert kernel.ok("print(n)").stream("stdout") == f"{fault_trials}\n"
    print(f"write locks held {0.05:g}-{1.0:g}s (< busy timeout): trials {fault_trials}, cells not answered or not stored: {len(problems)}")
    assert not problems, problems


def test_a_write_lock_past_the_busy_timeout_turns_durability_off_then_back_on(
    kernels: KernelFactory, home: Path, fault_trials: int
) -> None:
    kernel = kernels.start(env=kernel_env(home, "locked", **FAST))
    first = kernel.ok("a = 1")
    store = home / STORE
    trials = max(2, fault_trials // 10)
    problems = []
    for i in range(trials):
        with WriteLock(store):
            try:
                run = kernel.execute(f"b = {i}", timeout=CELL_WAIT)
            except AssertionError as exc:  # no reply: the failure this point is about
                problems.append((i, str(exc)))
                break
            said = notice_of(run)
            if run.content["status"] != "ok" or "durability is off" not in said or str(store) not in said or "write lock" not in said:
                problems.append((i, run.content, said))
        until_durable_again(kernel, home)
        if kernel.ok("print(a, b)").stream("stdout") != f"1 {i}\n":
            problems.append((i, "namespace"))
    assert is_stored(home, first.msg_id), "what was stored before the lock is still there"
    print(f"write locks held past the {BUSY_TIMEOUT_MS / 1000:g}s busy timeout: trials {trials}, "
          f"cells without a reply, a notice or durability back: {len(problems)}")
    assert not problems, problems


def _chattr_works(directory: Path) -> bool:
    probe = directory / f".chattr-{uuid.uuid4().hex}"
    probe.touch()
    try:
        return subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink()


@pytest.mark.skipif(not ROOT, reason="chattr +i needs root (CI runs as root)")
def test_an_immutable_store_turns_durability_off_and_comes_back_when_writable(kernels: KernelFactory, home: Path) -> None:
    first = kernels.start(env=kernel_env(home, "immutable"))
    stored = first.ok("a = 41")
    shutdown(first)
    store = home / STORE
    if shutil.which("chattr") is None or not _chattr_works(home):
        pytest.skip(f"chattr +i does not work on the file system of {home}")
    subprocess.run(["chattr", "+i", str(store)], check=True)
    problems = []
    try:
        kernel = kernels.start(env=kernel_env(home, "immutable", **FAST))
        for i in range(3):
            try:
                run = kernel.execute(f"b = {i}", timeout=CELL_WAIT)
            except AssertionError as exc:
                problems.append((i, str(exc)))
                break
            if run.content["status"] != "ok" or is_stored(home, run.msg_id):
                problems.append((i, run.content))
            if i == 0 and ("durability is off" not in notice_of(run) or str(store) not in notice_of(run)):
                problems.append((i, notice_of(run)))
    finally:
        subprocess.run(["chattr", "-i", str(store)], check=True)
    until_durable_again(kernel, home)
    assert is_stored(home, stored.msg_id)
    print(f"immutable store: cells 3, without a reply or a notice, or stored anyway: {len(problems)}")
    assert not problems, problems


#: Root without the capabilities that let it ignore file permissions: to it, a file of
#: user nobody with mode 0644 is another user's file, as it is to any other user. (The
#: kernel cannot run as nobody itself where the venv's Python is under root's 0700 home.)
AS_ANOTHER_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--inh-caps=-dac_override,-dac_read_search,-fowner"]


@pytest.mark.skipif(not ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv (CI runs as root)")
@pytest.mark.parametrize("layout", ["their-home", "open-home-their-store"])
def test_a_kernel_on_another_users_store_replies_and_says_why(kernels: KernelFactory, home: Path, layout: str) -> None:
    from harness import KERNEL_NAME
    from jupyter_client.manager import KernelManager

    class WithoutOverride(KernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return [*AS_ANOTHER_USER, *super().format_kernel_cmd(extra_arguments)]

    owner = kernels.start(env=kernel_env(home, "theirs"))
    stored = owner.ok("a = 1")
    shutdown(owner)
    # Everything becomes nobody's, with the modes of before point 7 (0755/0644); in the second
    # layout the home and its folders are open to all, so only the store file is theirs.
    nobody = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True, check=True).stdout)
    for path in [home, *home.rglob("*")]:
        os.chown(path, nobody, -1)
        open_dir = layout == "open-home-their-store"
        os.chmod(path, (0o777 if open_dir else 0o755) if path.is_dir() else (0o666 if open_dir else 0o644))
    os.chmod(home / STORE, 0o644)
    km = WithoutOverride(kernel_name=KERNEL_NAME)
    km.start_kernel(env=kernel_env(home, "theirs"))
    kernel = Kernel(km, home, "theirs")
    problems = []
    try:
        for i in range(3):
            try:
                run = kernel.execute(f"b = {i}", timeout=CELL_WAIT)
            except AssertionError as exc:
                problems.append((i, str(exc)))
                break
            if run.content["status"] != "ok":
                problems.append((i, run.content))
            if i == 0 and ("durability is off" not in notice_of(run) or str(home) not in notice_of(run)):
                problems.append((i, notice_of(run)))
    finally:
        kernel.close()
    assert is_stored(home, stored.msg_id)
    print(f"another user's store ({layout}): cells 3, without a reply or a notice: {len(problems)}")
    assert not problems, problems


# -- point 6 (second half): SQLite itself full ---------------------------------------------


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path, leave: int) -> Path:
    """A file that leaves about ``leave`` bytes free on ``directory``'s file system."""
    filler = directory / "filler"
    free = shutil.disk_usage(directory).free
    with open(filler, "ab") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_full_store_says_durability_is_off_and_never_claims_what_it_did_not_store(
    kernels: KernelFactory, tmp_path: Path, fault_trials: int, fault_rng: random.Random
) -> None:
    with small_tmpfs(tmp_path / "small", "24m") as mount:
        home = mount / "home"
        kernel = kernels.start(home=home, env=kernel_env(home, "full", **FAST))
        kernel.ok("x = 0")
        # Replied ok with no notice while durability was on (no "durability is off" since it
        # last came back; that notice is given once): these must be stored.
        clean: list[str] = []
        problems = []
        for i in range(fault_trials):
            filler = _fill(mount, fault_rng.choice([0, 4096, 65_536, 1 << 20, 4 << 20]))
            off = False
            for j in range(2):
                size = fault_rng.choice([100, 20_000, 300_000])
                try:
                    run = kernel.execute(f"x{j} = 'v' * {size}; print(len(x{j}))", timeout=CELL_WAIT)
                except AssertionError as exc:
                    problems.append((i, j, str(exc)))
                    break
                if run.content["status"] != "ok":
                    problems.append((i, j, run.content))
                elif not notice_of(run) and not off:
                    clean.append(run.msg_id)
                off = off or "durability is off" in notice_of(run)
            filler.unlink()
            if problems:
                break
            until_durable_again(kernel, home)
        kernel.kill9()
        stored = executions(home)
        claimed = [m for m in clean if stored.get(f"exec:{m}", {}).get("state") != "resolved"]
        print(f"SQLite full: trials {fault_trials}, cells answered without a notice {len(clean)}, "
              f"of them not stored: {len(claimed)}, cells without a reply or failed: {len(problems)}")
        assert not problems, problems
        assert not claimed, claimed


# -- point 7: other users cannot read a session --------------------------------------------


def _others_can(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode) & 0o077


def test_a_session_is_owner_only_whatever_the_umask(kernels: KernelFactory, home: Path) -> None:
    old = os.umask(0o022)
    try:
        kernel = kernels.start()
    finally:
        os.umask(old)
    kernel.ok("import numpy as np\nbig = np.ones(1_000_000)\nnote = 'secret notes'")
    kernel.ok("print(big.sum())")
    for live in (True, False):
        if not live:
            shutdown(kernel)
        paths = [home, *home.rglob("*")]
        assert any(p.name.endswith("-wal") for p in paths) or not live, "the WAL exists while the kernel runs"
        leaks = {str(p): oct(stat.S_IMODE(p.lstat().st_mode)) for p in paths if _others_can(p)}
        print(f"paths under the home ({'kernel running' if live else 'after shutdown'}): {len(paths)}, readable by others: {len(leaks)}")
        assert not leaks, leaks
    if ROOT and shutil.which("runuser"):
        files = [p for p in home.rglob("*") if p.is_file()]
        read = [p for p in files if subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(p)], capture_output=True).returncode == 0]
        print(f"files user nobody tried to read: {len(files)}, read: {len(read)}")
        assert files and not read, read


def test_the_http_engines_shared_directory_is_owner_only_unless_group_shared(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        for shared_mode, dirs, files in ((0o755, 0o700, 0o600), (0o2770, 0o770, 0o660)):
            shared = tmp_path / f"shared-{shared_mode:o}"
            shared.mkdir()
            os.chmod(shared, shared_mode)
            modes = Modes.like(shared)
            blobs = FileBlobStore(shared / "blobs", modes=modes).open()
            blobs.put(b"x" * 10_000)
            blobs.close()
            FlockSessionLock(shared, "s", modes=modes).acquire().release()
            SqliteIndex(shared / "index.sqlite3").open().close()
            made = list(shared.rglob("*"))
            wrong = {str(p): oct(stat.S_IMODE(p.stat().st_mode) & 0o777) for p in made
                     if stat.S_IMODE(p.stat().st_mode) & 0o777 != (dirs if p.is_dir() else files)}
            print(f"shared directory {shared_mode:o}: paths {len(made)}, with other modes than {dirs:o}/{files:o}: {len(wrong)}")
            assert made and not wrong, wrong
            if shared_mode & stat.S_ISGID:
                assert all(p.stat().st_mode & stat.S_ISGID for p in made if p.is_dir()), "a setgid directory stays setgid"
    finally:
        os.umask(old)


# -- point 12: a clean shutdown leaves one self-contained file -----------------------------


def test_a_clean_shutdown_leaves_one_self_contained_file(
    kernels: KernelFactory, home: Path, tmp_path: Path, fault_rng: random.Random
) -> None:
    trials, problems, cells = 3, [], 0
    for trial in range(trials):
        kernel = kernels.start()
        for _ in range(fault_rng.randint(1, 4)):
            kernel.ok(f"v = 'w' * {fault_rng.choice([10, 100_000, 1_500_000])}; print(v[:1] * 500_000)")
            cells += 1
        kernel.ok("%durable")  # opens a catalog reader too
        cells += 1
        shutdown(kernel)
        wal = home / f"{STORE}-wal"
        alone = tmp_path / f"copy-{trial}" / STORE
        alone.parent.mkdir()
        shutil.copyfile(home / STORE, alone)
        db = sqlite3.connect(alone)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            execs = db.execute("SELECT count(*) FROM promises WHERE kind = 'exec' AND state = 'resolved'").fetchone()[0]
        except sqlite3.Error as exc:
            tables, execs = set(), -1
            problems.append((trial, str(exc)))
        finally:
            db.close()
        if wal.exists() and wal.stat().st_size:
            problems.append((trial, f"WAL holds {wal.stat().st_size} bytes"))
        if not {"promises", "tasks", "meta"} <= tables or execs != cells:
            problems.append((trial, sorted(tables), execs, cells))
    print(f"clean shutdowns: trials {trials}, a store file not self-contained or a WAL left: {len(problems)}")
    assert not problems, problems


# -- point 11 (CLI): a damaged page is "unreadable or corrupt", rc 2 ---------------------------


def _cli_in_process(home: Path, *args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        rc = cli_main(["--home", str(home), *args], env={}, out=Output(out, err))
    except Exception as exc:  # noqa: BLE001 - what a raw traceback would be
        return 1, f"Traceback (in process): {type(exc).__name__}: {exc}"
    return rc, err.getvalue()


def test_the_cli_on_a_damaged_page_says_unreadable_or_corrupt(
    kernels: KernelFactory, home: Path, tmp_path: Path, fault_trials: int, fault_rng: random.Random
) -> None:
    kernel = kernels.start()
    for i in range(12):
        kernel.ok(f"x{i} = {i}; print('o' * 3000)")
    eid = f"exec:{kernel.ok('y = 1').msg_id}"
    shutdown(kernel)
    original = (home / STORE).read_bytes()
    # The first trial damages a whole page every listing reads: the root page of the
    # executions' summaries (a page in the middle of the file may be one no command reads).
    with contextlib.closing(sqlite3.connect(f"file:{home / STORE}?mode=ro", uri=True)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        [root] = db.execute("SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = 'listed'").fetchone()
    detected, problems = 0, []
    for trial in range(fault_trials):
        copy = tmp_path / f"damaged-{trial}"
        copy.mkdir()
        data = bytearray(original)
        # A whole page for the first trial, random spans in the middle of the file after it.
        start = (root - 1) * page_size if trial == 0 else fault_rng.randrange(len(data) // 4, 3 * len(data) // 4)
        length = page_size if trial == 0 else fault_rng.choice([16, 256, 4096])
        data[start : start + length] = fault_rng.randbytes(len(data[start : start + length]))
        (copy / STORE).write_bytes(bytes(data))
        for args in (["executions"], ["sessions"], ["show", eid]):
            if trial < 2:
                proc = subprocess.run(
                    [str(Path(sys.executable).parent / "pyrepl3"), "--home", str(copy), *args],
                    capture_output=True, text=True, timeout=TIMEOUT, env={k: v for k, v in os.environ.items() if not k.startswith("PYREPL3_")},
                )
                rc, said = proc.returncode, proc.stderr
            else:
                rc, said = _cli_in_process(copy, *args)
            if rc == 2 and "unreadable or corrupt" in said and str(copy / STORE) in said and "Traceback" not in said:
                detected += 1
            elif rc != 0 or "Traceback" in said:
                problems.append((trial, args, rc, said[-500:]))
    print(f"damaged store pages: trials {fault_trials} x 3 commands, detected (rc 2): {detected}, "
          f"read fine: {fault_trials * 3 - detected - len(problems)}, raw errors: {len(problems)}")
    assert not problems, problems
    assert detected >= 1, "a whole damaged page is detected"
