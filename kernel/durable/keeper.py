"""Keeping a kernel's durable session open across a lost engine."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kernel.core.errors import EngineConnectionError, PyRepl3Error
from kernel.core.notices import BROKEN, Notify
from kernel.core.settings import Settings
from kernel.durable.session import DurableSession

log = logging.getLogger(__name__)

#: Seconds between attempts to reach a lost engine again (PYREPL3_RECONNECT_SECONDS).
DEFAULT_RECONNECT = 5.0


def reconnect_interval(settings: Settings) -> float:
    """PYREPL3_RECONNECT_SECONDS, or the default when unset, 0 or unusable (never fails a kernel start)."""
    if problem := settings.problems.get("reconnect_seconds"):
        log.warning("PyREPL3: %s; using %gs", problem, DEFAULT_RECONNECT)
    return settings.reconnect_seconds or DEFAULT_RECONNECT


class SessionKeeper:
    """Keeps a kernel's durable session open, or says why it is not and gets it back.

    ``open`` runs at kernel start. If the engine is unreachable then, or is lost
    later (:meth:`lost`), a background thread tries to open the session again
    every ``interval`` seconds; the kernel picks the new session up with
    :meth:`poll` before its next cell. Nothing settled before is lost: the
    engine kept it, and the new session reads it back from there.
    """

    def __init__(self, opener: Callable[[], DurableSession], notice: Notify, *, interval: float = DEFAULT_RECONNECT) -> None:
        self._opener = opener
        self._notice = notice
        self.interval = interval
        self._lock = threading.Lock()
        self._ready: DurableSession | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def open(self) -> DurableSession | None:
        try:
            return self._opener()
        except EngineConnectionError as exc:
            self._notice(f"durability is off: {exc}; PyREPL3 will reconnect by itself (every {self.interval:g}s)", BROKEN)
            self._start(None)
        except PyRepl3Error as exc:
            self._notice(f"durability is off: {exc}", BROKEN)
        except Exception as exc:  # noqa: BLE001 - the kernel must start regardless
            log.exception("could not open the durable store")
            self._notice(f"durability is off: the durable store could not be opened ({exc})", BROKEN)
        return None

    def lost(self, ds: DurableSession, why: BaseException | str) -> None:
        """The engine went away under ``ds``: close it (in the background) and start reconnecting."""
        self._notice(f"durability is off: {why}; PyREPL3 will reconnect by itself (every {self.interval:g}s)", BROKEN)
        self._start(ds)

    def poll(self) -> DurableSession | None:
        """A session opened in the background since the last call, if any."""
        with self._lock:
            ds, self._ready = self._ready, None
        if ds is not None:
            self._notice(f"durability is back on: reconnected to {ds.store_path}")
        return ds

    @property
    def reconnecting(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _start(self, old: DurableSession | None) -> None:
        if self.reconnecting:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(old,), name="pyrepl3-reconnect", daemon=True)
        self._thread.start()

    def _run(self, old: DurableSession | None) -> None:
        if old is not None:
            try:
                old.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                log.debug("closing the lost session failed", exc_info=True)
        reported = ""
        while not self._stop.wait(self.interval):
            try:
                ds = self._opener()
            except EngineConnectionError as exc:
                log.info("engine still unreachable: %s", exc)
                continue
            except Exception as exc:  # noqa: BLE001 - keep trying; say it once
                if str(exc) != reported:
                    reported = str(exc)
                    self._notice(f"durability stays off: {exc}", BROKEN)
                continue
            if old is not None:
                self._carry_over(old, ds)
            with self._lock:
                if self._stop.is_set():
                    ds.close()
                    return
                self._ready = ds
            return

    def _carry_over(self, old: DurableSession, new: DurableSession) -> None:
        """Outcomes the lost session could not store are stored by the new one."""
        for eid in new.carry_over(old):
            self._notice(f"{eid} finished while the engine was away; its outcome is stored now")

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            ds, self._ready = self._ready, None
        if ds is not None:
            ds.close()
