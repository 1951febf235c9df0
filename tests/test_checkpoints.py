"""Namespace checkpoints on real kernels: restart, kill -9, time travel, bad data."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from harness import KernelFactory, Store, kernel_env, wait_for
from test_fault_tamper import Rows

#: Checkpoints work the same on every engine: each kernel test here runs on both,
#: except those marked ``embedded_only`` (with the reason).
pytestmark = pytest.mark.engines("embedded", "postgres")

SETUP = """
import numpy as np
count = 41
name = "pyrepl3"
conf = {"lr": 0.1, "layers": [64, 32]}
def double(v):
    return 2 * v
inc = lambda v: v + count
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2
p = Point(3, 4)
arr = np.arange(12, dtype=np.float64).reshape(3, 4)
shared = [1, 2]
alias = shared
doomed = "bye"
"""

MUTATE = """
shared.append(3)
arr[0, 0] = 100.0
p.x = 6
conf["lr"] = 0.01
count += 1
del doomed
"""

CHECK = """
import numpy as np
print(count, name, conf, double(4), inc(1), p.norm2(), type(p).__name__,
      arr[0, 0], arr.shape, arr.flags.writeable, shared, alias is shared, 'doomed' in dir(), sep='|')
"""
EXPECTED = "42|pyrepl3|{'lr': 0.01, 'layers': [64, 32]}|8|43|52|Point|100.0|(3, 4)|True|[1, 2, 3]|True|False\n"


@pytest.mark.parametrize("how", ["restart_kernel", "kill -9"])
def test_namespace_survives(kernels: KernelFactory, how: str) -> None:
    kernel = kernels.start(session="survive")
    kernel.ok(SETUP)
    kernel.ok(MUTATE)
    assert kernel.ok(CHECK).stream("stdout") == EXPECTED
    if how == "restart_kernel":
        kernel.km.restart_kernel(now=False)
        kernel.kc.wait_for_ready(timeout=60)
        again = kernel
    else:
        kernel.kill9()
        again = kernels.start(session="survive")
    run = again.ok(CHECK)
    assert run.stream("stdout") == EXPECTED
    assert run.stream("stderr") == "", "what was restored is no cell output: the cell looks as under ipykernel"
    notices = again.ok("%durable").stream("stdout")
    assert "namespace of execution 3 is back: restored 11 names" in notices, notices


def test_kill9_restores_through_a_delta_chain(kernels: KernelFactory, home: Path, store: Store) -> None:
    """Each record after the first holds only its cell's changes (a delta on the full record at its
    ``base``); kill -9 and a start bring back the namespace the whole chain describes, and the chain
    goes on after the restore."""
    rows = Rows(home, store)
    kernel = kernels.start(session="deltas")
    kernel.ok(SETUP)
    kernel.ok(MUTATE)
    kernel.ok("extra = {'k': [1]}\nimport threading\nlk = threading.Lock()")
    kernel.ok("extra['k'].append(2)\ndel lk")
    kernel.kill9()
    stored = store.session("deltas")
    ids = wait_for(lambda: len(found := rows.checkpoints(stored)) == 4 and found, what="four checkpoints")
    values = [rows.data(cid, "value") for cid in ids]
    assert [v["base"] for v in values] == [int(ids[0][-10:])] * 4
    assert {"arr", "conf", "count", "p", "shared"} <= set(values[1]["manifest"]["entries"]) and "name" not in values[1]["manifest"]["entries"]
    assert values[1]["manifest"]["removed"] == ["doomed"] and list(values[2]["manifest"]["skipped"]) == ["lk"]
    assert sorted(values[3]["manifest"]["entries"]) == ["extra"] and values[3]["manifest"]["removed"] == ["lk"]
    again = kernels.start(session="deltas")
    check = CHECK + "print(extra, 'lk' in dir(), 'threading' in dir())\n"
    run = again.ok(check)
    assert run.stream("stdout") == EXPECTED + "{'k': [1, 2]} False True\n", run.stream("stderr")
    assert run.stream("stderr") == ""
    again.ok("more = [count]")
    again.kill9()
    ids = wait_for(lambda: len(found := rows.checkpoints(stored)) == 6 and found, what="six checkpoints (the check's cell has one)")
    newest = rows.data(ids[-1], "value")
    assert newest["base"] == int(ids[0][-10:]) and sorted(newest["manifest"]["entries"]) == ["more"]
    third = kernels.start(session="deltas")
    assert third.ok(check + "print(more)").stream("stdout") == EXPECTED + "{'k': [1, 2]} False True\n[42]\n"


def test_unpicklable_value_is_skipped_and_reported(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="files")
    run = kernel.ok("fh = open(__file__ if '__file__' in dir() else '/etc/hostname')\nkeep = [1, 2, 3]\nimport threading\nlk = threading.Lock()")
    assert run.stream("stderr") == "", "what a checkpoint skips is no cell output"
    notices = kernel.ok("%durable").stream("stdout")
    assert "not saved in the checkpoint:" in notices and "fh (open file" in notices and "lk (" in notices, notices
    kernel.kill9()
    fresh = kernels.start(session="files")
    run = fresh.ok("print(keep, 'fh' in dir(), 'lk' in dir())")
    assert run.stream("stdout") == "[1, 2, 3] False False\n"
    assert run.stream("stderr") == "", "a name that was never saved does not make the restore a failure"
    assert "skipped fh: open file" in fresh.ok("%durable").stream("stdout")


@pytest.mark.embedded_only("corrupts a blob file; Postgres: test_engines")
def test_corrupted_blob_is_reported_and_the_rest_restored(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start(session="corrupt")
    kernel.ok("import numpy as np\ngood = list(range(10))\nbad = np.ones(50_000)")
    kernel.kill9()
    # Flip bytes in the largest blob (the array's buffer).
    blob = max((p for p in (home / "blobs").rglob("*") if p.is_file() and p.parent.name not in ("tmp", "corrupt")),
               key=lambda p: p.stat().st_size)
    data = bytearray(blob.read_bytes())
    data[100:110] = b"\xff" * 10
    blob.write_bytes(bytes(data))
    fresh = kernels.start(session="corrupt")
    run = fresh.ok("print(good, 'bad' in dir())")
    assert run.stream("stdout") == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9] False\n"
    assert "skipped bad:" in run.stream("stderr") and "corrupt" in run.stream("stderr"), "a saved value lost: told in the cell"
    assert "PYREPL3_NOTICES=log" in run.stream("stderr"), "and how to keep such messages out of cells"


def test_time_travel(kernels: KernelFactory) -> None:
    kernel = kernels.start(session="travel")
    kernel.ok("x = 1\nhistory = ['a']")
    kernel.ok("x = 2\nhistory.append('b')\nnew = True")
    kernel.ok("x = 3\nhistory.append('c')")
    table = kernel.ok("%durable checkpoints").of_type("display_data")[0]["content"]["data"]
    assert "text/html" in table and "pyrepl3-checkpoints" in table["text/html"]
    assert "history, new, x" in table["text/plain"]
    run = kernel.ok("%durable restore 1\nprint(x, history, 'new' in dir())")
    assert run.stream("stdout").endswith("1 ['a'] False\n")
    missing = kernel.ok("%durable restore 99")
    assert "no checkpoint after execution 99" in missing.stream("stdout")


def test_exclude_and_size_limit(kernels: KernelFactory, home: Path) -> None:
    kernel = kernels.start(env=kernel_env(home, "limits", PYREPL3_CHECKPOINT_MAX_BYTES="100000"))
    kernel.ok("%durable exclude token")
    run = kernel.ok("token = 'do-not-store'\nbig = bytes(500_000)\nsmall = 1")
    assert run.stream("stderr") == ""
    notices = kernel.ok("%durable").stream("stdout")
    assert "token (excluded)" in notices and "big (" in notices, notices
    kernel.kill9()
    fresh = kernels.start(env=kernel_env(home, "limits"))
    assert fresh.ok("print(small, 'token' in dir(), 'big' in dir())").stream("stdout") == "1 False False\n"


@pytest.mark.embedded_only("edits store.sqlite3; Postgres: test_engines")
@pytest.mark.parametrize("tamper", ["wrong signature", "unsigned", "other key"])
def test_tampered_checkpoints_are_refused(kernels: KernelFactory, home: Path, tamper: str) -> None:
    kernel = kernels.start(session="tamper")
    kernel.ok("secret_plan = 'original'")
    kernel.close()
    env = kernel_env(home, "tamper")
    if tamper == "other key":
        env["PYREPL3_KEY"] = "a-different-key"
    else:
        db = sqlite3.connect(home / "store.sqlite3")
        [(pid, blob)] = db.execute("SELECT id, record FROM promises WHERE kind = 'checkpoint'").fetchall()
        record = json.loads(blob)
        import base64

        value = json.loads(base64.b64decode(record["value"]["data"]))
        if tamper == "unsigned":
            del value["signature"]
        else:
            value["manifest"]["skipped"] = {"injected": "by an attacker"}
        record["value"]["data"] = base64.b64encode(json.dumps(value).encode()).decode()
        db.execute("UPDATE promises SET record = ? WHERE id = ?", (json.dumps(record).encode(), pid))
        db.commit()
        db.close()
    fresh = kernels.start(env=env)
    run = fresh.ok("print('secret_plan' in dir())")
    assert run.stream("stdout") == "False\n"
    message = run.stream("stderr")
    assert "not restored" in message and "refusing to load it" in message and "ckpt:" in message, message


FRAMES = "import numpy as np, pandas as pd\n" + "".join(
    f"df{i} = pd.DataFrame(np.full((2000, 10), {i}.0), columns=[f'c{{k}}' for k in range(10)])\n" for i in range(20)
)  # twenty frames built separately: they share nothing a user could see
ALIASES = """
same = df3
view = df4[:]
col = df5["c0"]
idx = pd.Index(range(2000))
ia = pd.DataFrame({"q": np.arange(2000)}, index=idx)
ib = pd.DataFrame({"q": -np.arange(2000)}, index=idx)
inner = [1, 2]
twice = [inner, inner]
"""
CHECK_FRAMES = """
for i in range(20):
    want = pd.DataFrame(np.full((2000, 10), float(i)), columns=[f"c{k}" for k in range(10)])
    if i == 7:
        want.iloc[0, 0] = -7.0
    pd.testing.assert_frame_equal(globals()[f"df{i}"], want)
assert same is df3 and ia.index is ib.index is idx and twice[0] is twice[1] is inner
df4.iloc[0, 0] = -4.0
df5.iloc[1, 0] = -5.0
assert view.iloc[0, 0] == 4.0 and view.iloc[2, 2] == -1.0 and df4.iloc[2, 2] == 4.0 and col.iloc[1] == 5.0, "copy-on-write views stay independent"
print("frames ok")
"""
PICKLED = re.compile(r"checkpoint after execution (\d+): pickled \d+ name\(s\) \[([^\]]*)\], changed \[([^\]]*)\]")


def test_changing_one_of_twenty_frames_repickles_it_alone(kernels: KernelFactory, home: Path, tmp_path: Path) -> None:
    log = tmp_path / "kernel.log"
    kernel = kernels.start(env=kernel_env(home, "frames", PYREPL3_DEBUG="1"), log=log)
    kernel.ok(FRAMES)
    kernel.ok(ALIASES)
    kernel.ok("df7.iloc[0, 0] = -7.0")
    kernel.ok("view.iloc[2, 2] = -1.0")  # a copy-on-write view of df4: not glued to it

    def capture(count: int) -> tuple[str, str] | None:
        found = PICKLED.findall(log.read_text(errors="replace")) if log.exists() else []
        return next(((p, c) for n, p, c in found if n == str(count)), None)

    pickled, changed = wait_for(lambda: capture(3), what="the kernel logs its third checkpoint")
    print(f"changing df7 of 20 frames: pickled [{pickled}], changed [{changed}]")
    assert pickled == "df7" and changed == "df7"
    assert wait_for(lambda: capture(4), what="the kernel logs its fourth checkpoint") == ("view", "view")
    kernel.kill9()
    fresh = kernels.start(env=kernel_env(home, "frames"))
    assert fresh.ok(CHECK_FRAMES).stream("stdout") == "frames ok\n"
