"""``pyrepl3 worker``: run the remote calls (``durable.rpc`` / ``durable.map``) cells send a group.

    pyrepl3 worker --store postgresql://... --group gpu [--concurrency N] [--name NAME]
                   [--lease SECONDS] [--grace SECONDS]

The worker joins ``--group`` on the shared engine (``--store``, else
``PYREPL3_STORE``; the embedded store cannot be shared and is refused, naming
it) and runs what it is given in ``--concurrency`` threads, printing one line
per attempt started and per call finished, failed or refused. It needs the
session key the cells sign their calls with (``PYREPL3_KEY``, or the key file
in this machine's Jupyter data dir): anything not signed with it is refused.

SIGTERM or SIGINT: it takes nothing new, lets the running calls finish for up
to ``--grace`` seconds, gives the rest back (another worker of the group gets
them at once), says what it finished and gave back, and exits 0. A bad store,
key, group or option is an error message (no secret in it) and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

from kernel.checkpoint.signing import Signer, load_key
from kernel.cli.render import Output
from kernel.core.errors import ConfigurationError
from kernel.core.ids import worker_group
from kernel.core.locations import default_home
from kernel.core.settings import Settings
from kernel.durable.worker import DEFAULT_GRACE, DEFAULT_LEASE, Drained, Worker
from kernel.store.registry import open_engine, scheme_of

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("worker", help="run the remote calls (durable.rpc / durable.map) cells send a worker group")
    p.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help="the shared engine, as PYREPL3_STORE (default): postgresql://... or http(s)://... (not the embedded store)",
    )
    p.add_argument("--group", required=True, help="the worker group to join (the group= cells send to)")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, help="calls run at once, in threads (default: CPUs)")
    p.add_argument("--name", help="how this worker is shown in results and logs (default: <host>-<pid>)")
    p.add_argument("--lease", type=float, default=DEFAULT_LEASE, help=f"seconds of the lease on a running task (default {DEFAULT_LEASE:g})")
    p.add_argument(
        "--grace", type=float, default=DEFAULT_GRACE, help=f"seconds SIGTERM lets running calls finish (default {DEFAULT_GRACE:g})"
    )
    p.set_defaults(fn=worker)


class PrintReporter:
    """One plain, flushed line per event on stdout (threads report attempts: one lock)."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self._lock:
            self._out.line(f"{time.strftime('%H:%M:%S')} {text}")
            self._out.stdout.flush()

    def started(self, promise_id: str, function: str, attempt: int) -> None:
        self._say(f"start    {promise_id} {function} attempt {attempt}")

    def finished(self, promise_id: str, function: str, attempts: int, seconds: float) -> None:
        self._say(f"done     {promise_id} {function} attempts {attempts} {seconds:.3f}s")

    def failed(self, promise_id: str, function: str, attempts: int, seconds: float, error: str) -> None:
        self._say(f"failed   {promise_id} {function} attempts {attempts} {seconds:.3f}s {error}")

    def refused(self, promise_id: str, why: str) -> None:
        self._say(f"refused  {promise_id} {why}")


def worker_key(settings: Settings, key_file: Path) -> Signer:
    """The session key the calls must be signed with. Unlike a kernel, a worker never makes
    a new key: nothing signed with one it just made could reach it."""
    if not settings.key and not key_file.exists():
        raise ConfigurationError(
            f"no signing key: set PYREPL3_KEY to the key of the sessions whose calls this worker runs "
            f"(or put their key file at {key_file}, mode 600)"
        )
    try:
        return Signer(load_key(settings.key, key_file))
    except OSError as exc:
        raise ConfigurationError(f"the signing key file {key_file} cannot be read ({exc.strerror or exc})") from None


def _route_logs(*, debug: bool) -> None:
    """Warnings and errors (refusals among them) to stderr; PyREPL3's INFO too with PYREPL3_DEBUG=1."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("kernel").setLevel(logging.INFO if debug else logging.WARNING)


def setup_tracing(settings: Settings, name: str) -> None:
    """OpenTelemetry in a worker: ``PYREPL3_OTEL_SETUP``'s callable, as in a kernel (a failure is
    logged, naming the setting; the worker runs on, untraced)."""
    from kernel.core.telemetry import install_telemetry

    install_telemetry(settings)


def worker(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    group = worker_group(args.group)
    if args.concurrency < 1:
        raise ConfigurationError(f"--concurrency {args.concurrency}: a worker runs at least 1 call at a time")
    if not args.lease > 0:
        raise ConfigurationError(f"--lease {args.lease:g}: it must be a number of seconds > 0")
    if args.grace < 0:
        raise ConfigurationError(f"--grace {args.grace:g}: it must be a number of seconds >= 0")
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    if not _NAME.match(name):
        raise ConfigurationError(f"--name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
    if getattr(args, "store", None):  # given on the command line
        settings = replace(settings, sources={**settings.sources, "store": "--store"})
    if not scheme_of(settings.store):
        where = f"{settings.source('store')}={settings.store!r} names" if settings.store else "PYREPL3_STORE is empty:"
        raise ConfigurationError(
            f"a worker needs the store its kernels share, and {where} the embedded store, which only one kernel can use; "
            "give --store (or PYREPL3_STORE) postgresql://... or http(s)://..., as the kernels' PYREPL3_STORE"
        )
    signer = worker_key(settings, default_home() / "key")
    _route_logs(debug=settings.debug)
    setup_tracing(settings, name)
    engine = open_engine(settings)
    try:
        drained = asyncio.run(_serve(engine, group, signer, name, args, out))
    finally:
        engine.close()
    given = ", ".join(drained.given_back) or "none"
    out.line(f"worker {name} stopped: {drained.finished} call(s) finished ({drained.finished_while_stopping} while stopping), "
             f"{len(drained.given_back)} given back ({given})")
    out.stdout.flush()
    if drained.given_back:
        # Their threads cannot be stopped, and would keep the interpreter from exiting.
        sys.stderr.flush()
        os._exit(0)
    return 0


async def _serve(engine: object, group: str, signer: Signer, name: str, args: argparse.Namespace, out: Output) -> Drained:
    pid = f"{name}-{uuid.uuid4().hex[:8]}"
    w = Worker(engine, group, signer, name=name, pid=pid, concurrency=args.concurrency, lease=args.lease,  # type: ignore[arg-type]
               reporter=PrintReporter(out))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await w.start()
    out.line(f"worker {name} in group {group} on {engine.where}: {args.concurrency} thread(s), lease {args.lease:g}s")  # type: ignore[attr-defined]
    out.stdout.flush()
    await stopping.wait()
    out.line(f"worker {name} stopping: {len(w.running)} call(s) running, grace {args.grace:g}s")
    out.stdout.flush()
    drained = await w.drain(args.grace)
    if not drained.given_back:  # else the process ends at once (see worker()): nothing to wait for
        await w.stop()
    return drained


__all__ = ["PrintReporter", "add_parser", "setup_tracing", "worker", "worker_key"]
