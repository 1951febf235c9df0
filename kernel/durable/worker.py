"""A ``pyrepl3 worker``: a Resonate instance in a worker group, running the calls cells send it.

Several workers started with the same ``--group`` on the same shared engine
(Postgres, or a Resonate server) form a group: a task a cell sends that group
(``durable.rpc``) goes to whichever of them claims it first, and each claims
no more than it has threads for (:class:`~kernel.store.claims.Claims`), so the
work spreads over the group.

Leases: a worker holds each task it runs under a lease of ``lease`` seconds,
renewed every half lease from its event loop (the functions run in threads, so
a long call does not stop the renewals). A worker that dies (SIGKILL, a lost
machine) stops renewing; when the lease runs out the engine gives the task to
another worker of the group, which runs it again -- at least once -- and goes
on with its attempt count (:mod:`kernel.durable.attempt_journal`). The promise
is settled once: through the task, which only its current holder can fulfil.
On Postgres the engine's timers (leases, promise timeouts, retry delays) fire
only while someone pumps them: every worker does, on its reader's tick
(:class:`~kernel.store.postgres.network.PgNetwork`, ``drive_timers``).

Stopping (:meth:`Worker.drain`): take nothing new, let the running calls finish
for up to ``grace`` seconds, then give the unfinished tasks back (released: the
engine re-delivers them to another worker at once) -- their threads cannot be
stopped, so the process should then exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from resonate.heartbeat import AsyncHeartbeat
from resonate.resonate import Resonate
from resonate.retry import Never
from resonate.send import Sender
from resonate.transport import Transport

from kernel.checkpoint.signing import Signer
from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import ConfigurationError
from kernel.core.ids import REMOTE_CALL_FUNC, worker_group
from kernel.durable.codec import NoPickledErrors
from kernel.durable.worker_calls import CallRunner, Reporter, pyrepl3_call
from kernel.store.base import Engine
from kernel.store.claims import Claims

log = logging.getLogger(__name__)

#: Seconds of a worker's lease on a running task (renewed every half lease).
DEFAULT_LEASE = 15.0
#: Seconds a stopping worker lets its running calls finish before it gives them back.
DEFAULT_GRACE = 30.0


@dataclass(frozen=True)
class Drained:
    """What a stopping worker did with its calls."""

    finished: int
    given_back: list[str]
    #: Calls finished while it drained (counted in ``finished`` too).
    finished_while_stopping: int = 0


class Worker:
    """One worker process's Resonate instance; start it on the event loop that will run it."""

    def __init__(
        self,
        engine: Engine,
        group: str,
        signer: Signer,
        *,
        name: str,
        pid: str,
        concurrency: int,
        lease: float = DEFAULT_LEASE,
        reporter: Reporter | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        if not lease > 0:
            raise ConfigurationError(f"lease {lease!r}: it must be a number of seconds > 0")
        self.engine = engine
        self.group = worker_group(group)
        self.name = name
        self.pid = pid
        self.concurrency = concurrency
        self.lease = lease
        self.claims = Claims(concurrency, clock=clock)
        self.pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"pyrepl3-call-{name}")
        self.runner = CallRunner(signer, name=name, pool=self.pool, claims=self.claims, reporter=reporter, group=group, clock=clock)
        self._clock = clock
        self.resonate: Resonate | None = None
        self._heartbeat: AsyncHeartbeat | None = None
        self._sender: Sender | None = None

    async def start(self) -> Worker:
        """Connect to the group and take tasks (on the running loop)."""
        network, sources = self.engine.worker_network(self.group, self.pid, self.claims)
        ttl = timedelta(seconds=self.lease)
        # The SDK's own heartbeat, built here so that a stopping worker can see which task
        # versions it holds and give them back (task.release) through the same protocol.
        self._sender = Sender(Transport(network, ()), None)
        self._heartbeat = AsyncHeartbeat(self.pid, max(int(self.lease * 1000) // 2, 1), self._sender)
        resonate = Resonate(
            network=network,
            sources=sources,
            pid=self.pid,
            group=self.group,
            ttl=ttl,
            heartbeat=self._heartbeat,
            max_concurrent_tasks=self.concurrency,
            retry_policy=Never(),
            encryptor=NoPickledErrors(),
            env={},
            autostart=False,
        )
        resonate.register(pyrepl3_call, name=REMOTE_CALL_FUNC, retry_policy=Never())
        resonate.with_dependency(self.runner)
        self.runner.promises = resonate.promises
        self.runner.give_back = self.give_back
        self.resonate = resonate
        resonate.start()
        log.info("worker %s (pid %s) joined group %s on %s", self.name, self.pid, self.group, self.engine.where)
        return self

    @property
    def running(self) -> list[str]:
        """The promise ids of the calls running here now."""
        return list(self.runner.running)

    async def give_back(self, promise_id: str) -> bool:
        """Release the task of ``promise_id`` (stop renewing its lease first): the engine
        gives it to another worker at once. False if this worker does not hold it."""
        assert self._heartbeat is not None and self._sender is not None
        version = self._heartbeat.active_tasks.get(promise_id)
        self._heartbeat.stop(promise_id)
        if version is None:
            return False
        try:
            await self._sender.task_release(promise_id, version)
        except Exception as exc:  # noqa: BLE001 - it comes back when its lease runs out instead
            log.warning("could not give back %s (%s); it is re-delivered when its lease ends", promise_id, exc)
            return False
        return True

    async def drain(self, grace: float = DEFAULT_GRACE) -> Drained:
        """Stop taking tasks; wait up to ``grace`` seconds for the running calls; give back the rest."""
        self.claims.close()
        before = self.runner.finished
        deadline = self._clock.monotonic() + grace
        # A call is done once the SDK has fulfilled its task (and stopped renewing its lease).
        while self._busy() and self._clock.monotonic() < deadline:
            await asyncio.sleep(0.05)
        held = dict.fromkeys([*self.runner.running, *(self._heartbeat.active_tasks if self._heartbeat else ())])
        given_back = [pid for pid in held if await self.give_back(pid)]
        return Drained(self.runner.finished, given_back, self.runner.finished - before)

    def _busy(self) -> bool:
        return bool(self.runner.running or (self._heartbeat is not None and self._heartbeat.active_tasks))

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the connections (calls still running are abandoned: call :meth:`drain` first)."""
        if self.resonate is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.resonate.stop(), timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["DEFAULT_GRACE", "DEFAULT_LEASE", "Drained", "Worker"]
