"""Kernel-level session state that comes back with the namespace.

A notebook sets more up than variables: ``%matplotlib inline``, ``%load_ext
autoreload`` and ``%autoreload 2``, ``%config`` values, ``%cd``, ``sys.path``
entries, ``%env``. Without them a restored namespace is not the session the
user left: after a ``kill -9`` in a plotting notebook the figures of later
cells vanished. :class:`SessionState` captures this state after every
execution, as plain JSON data that travels inside the signed checkpoint
manifest (``Manifest.state``; never pickled, so the signature covers it), and
applies it again before the namespace is restored.

What is recorded is what the session changed, measured against the kernel's
own start (the *baseline*, taken before the first cell or the first restore):
the working directory if it moved, ``sys.path`` entries added (with the entry
they follow) or removed, environment variables set, changed or deleted,
``%config`` values, loaded extensions, autoreload's mode and ``%aimport``
lists, and the matplotlib backend with IPython's integration. So a new kernel
started elsewhere (another directory, another machine on a shared engine)
gets the user's changes on top of its own environment, not the old kernel's.

Secrets are never stored: an environment variable or ``%config`` trait whose
name contains PASSWORD, PASSWD, SECRET, TOKEN, KEY or CREDENTIAL, the
PyREPL3/Resonate credentials, and any value holding a URL with a password
(``scheme://user:pass@host``); see :mod:`kernel.jupyter.secret_names`. Such
variables are stored by name only, so a restart says which ones to set again.

Restoring is item by item (the working directory; ``sys.path``; each
environment variable; each extension; autoreload; each ``%config`` value;
matplotlib), in that order: the directory and ``sys.path`` first so that the
imports the rest needs work, the environment before extensions read it,
``%config`` before matplotlib so ``InlineBackend`` settings apply when inline
support is configured. One failing item is named in a notice and the others
still come back. Time travel (``%durable restore N``) applies the state of
execution N too: the working directory, ``sys.path`` and the environment
become exactly what they were then (later changes are undone, secrets left
alone); extensions, autoreload, ``%config`` and matplotlib are applied again
but never undone (IPython cannot unload most of them).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from kernel.core.notices import BROKEN, Notify
from kernel.jupyter.secret_names import looks_secret
from kernel.jupyter.shell_state import (
    activate_matplotlib, autoreload_items, autoreload_of, config_changes, config_values, load_extension, matplotlib_of, set_config,
)

log = logging.getLogger(__name__)

#: Bumped when state written by this code could not be applied by older code.
STATE_FORMAT = 1


@dataclass
class Process:
    """The process-wide state a session changes (a seam: tests and embedders pass their own)."""

    environ: MutableMapping[str, str] = field(default_factory=lambda: os.environ)
    path: list[Any] = field(default_factory=lambda: sys.path)
    getcwd: Callable[[], str] = os.getcwd
    chdir: Callable[[str], None] = os.chdir


@dataclass
class Baseline:
    """The kernel's own start: what the session's changes are measured against."""

    cwd: str
    path: list[str]
    environ: dict[str, str]
    config: dict[str, dict[str, Any]]


class SessionState:
    """Capture and apply the kernel-level state of one IPython shell
    (:class:`kernel.checkpoint.history.SessionStateHooks`)."""

    def __init__(self, shell: Any, notice: Notify, process: Process | None = None) -> None:
        self.shell = shell
        self.notice = notice
        self.process = process or Process()
        self.baseline: Baseline | None = None
        #: The state right after a restore at start, until :meth:`settle` (None after it).
        self._restored: Baseline | None = None
        self._settled = False

    def watch(self) -> None:
        """Settle the baseline just before the first cell runs (see :meth:`settle`)."""
        def first_cell() -> None:
            self.shell.events.unregister("pre_execute", first_cell)
            try:
                self.settle()
            except Exception:  # noqa: BLE001 - never in the user's cell; capture takes a baseline later
                log.warning("session state: could not take the kernel's start", exc_info=True)

        self.shell.events.register("pre_execute", first_cell)

    def begin(self) -> Baseline:
        """The baseline, taken now if it was not yet (by a restore, or the first cell)."""
        if self.baseline is None:
            self.baseline = self._now()
        return self.baseline

    def settle(self) -> None:
        """The kernel has finished starting: what it changed itself since a restore
        at start (ipykernel adds ``''`` to ``sys.path`` and sets ``MPLBACKEND`` after
        building the kernel, startup files run) is the kernel's, not the session's:
        it joins the baseline, so it is not stored as the user's."""
        self._settled = True
        if self.baseline is None or self._restored is None:
            self.begin()
            return
        start, restored, now = self.baseline, self._restored, self._now()
        self._restored = None
        if now.cwd != restored.cwd:
            start.cwd = now.cwd
        start.path = _compose_path(start.path, _path_changes(restored.path, now.path) or {})
        for name, value in now.environ.items():
            if restored.environ.get(name) != value:
                start.environ[name] = value
        for name in restored.environ.keys() - now.environ.keys():
            start.environ.pop(name, None)
        for section, traits in (config_changes(restored.config, now.config) or {}).items():
            start.config.setdefault(section, {}).update(traits)

    def _now(self) -> Baseline:
        p = self.process
        return Baseline(cwd=p.getcwd(), path=_paths(p.path), environ=dict(p.environ), config=config_values(self.shell.config))

    # -- capture -------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """The session's state now, as plain JSON data. Never raises: a part that
        cannot be read is left out (and logged)."""
        start = self.begin()
        state: dict[str, Any] = {"format": STATE_FORMAT}
        parts: dict[str, Callable[[], Any]] = {
            "cwd": lambda: (cwd if (cwd := self.process.getcwd()) != start.cwd else None),
            "sys_path": lambda: _path_changes(start.path, _paths(self.process.path)),
            "env": lambda: _env_changes(start.environ, self.process.environ),
            "extensions": lambda: sorted(self.shell.extension_manager.loaded),
            "autoreload": lambda: autoreload_of(self.shell),
            "config": lambda: config_changes(start.config, config_values(self.shell.config)),
            "matplotlib": lambda: matplotlib_of(self.shell),
        }
        for name, read in parts.items():
            try:
                value = read()
            except Exception:  # noqa: BLE001 - a part we cannot read is not saved, the rest is
                log.warning("session state: could not read %s", name, exc_info=True)
                continue
            if value:
                state[name] = value
        return state

    # -- restore -------------------------------------------------------------

    def restore(self, state: Mapping[str, Any]) -> list[str]:
        """Apply ``state`` item by item; a failing item is named in a notice and the
        rest still applied. Returns the items applied."""
        self.begin()
        if int(state.get("format", 0)) > STATE_FORMAT:
            self.notice(f"the session state of this checkpoint is of a newer format ({state.get('format')}); not restored", BROKEN)
            return []
        applied: list[str] = []
        failed: dict[str, str] = {}
        for item, apply in self._items(state):
            try:
                apply()
            except Exception as exc:  # noqa: BLE001 - one item must not cost the others
                log.info("session state: %s not restored", item, exc_info=True)
                failed[item] = f"{type(exc).__name__}: {exc}"
            else:
                applied.append(item)
        if failed:
            listed = "; ".join(f"{item} ({why})" for item, why in failed.items())
            self.notice(f"not restored from the session: {listed}; run those lines again if you need them", BROKEN)
        if secrets := (state.get("env") or {}).get("secret"):
            self.notice(
                "environment variables that look like secrets are never saved; set them again: " + ", ".join(sorted(secrets)),
                BROKEN,
            )
        log.info("session state restored: %s", ", ".join(applied) or "nothing")
        if not self._settled:
            self._restored = self._now()
        return applied

    def _items(self, state: Mapping[str, Any]) -> Iterator[tuple[str, Callable[[], None]]]:
        start = self.begin()
        p = self.process
        target = state.get("cwd") or start.cwd
        yield f"working directory {target}", lambda: _chdir(p, target)
        yield "sys.path", lambda: p.path.__setitem__(slice(None), _compose_path(start.path, state.get("sys_path") or {}))
        yield from _env_items(p.environ, start.environ, state.get("env") or {})
        shell = self.shell
        for name in state.get("extensions") or []:
            yield f"extension {name}", lambda name=name: load_extension(shell, name)
        if autoreload := state.get("autoreload"):
            yield from autoreload_items(shell, autoreload)
        for section, traits in (state.get("config") or {}).items():
            for trait, value in traits.items():
                yield f"%config {section}.{trait}", lambda s=section, t=trait, v=value: set_config(shell, s, t, v)
        if mpl := state.get("matplotlib"):
            yield f"matplotlib backend {mpl.get('backend')}", lambda: activate_matplotlib(shell, mpl)


# -- the working directory and sys.path -----------------------------------------


def _chdir(process: Process, target: str) -> None:
    try:
        here = process.getcwd()
    except OSError:  # the current directory was deleted
        here = None
    if here != target:
        process.chdir(target)


def _paths(path: list[Any]) -> list[str]:
    """``sys.path`` as text (entries may be ``Path`` objects; other kinds are not importable paths anyway)."""
    return [os.fspath(p) for p in path if isinstance(p, (str, os.PathLike))]


def _path_changes(start: list[str], now: list[str]) -> dict[str, Any] | None:
    """Entries added (each with the start entry it follows, None = at the front) and start entries removed."""
    base = set(start)
    anchor: str | None = None
    added: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in now:
        if entry in base:
            anchor = entry
        elif entry not in seen:
            seen.add(entry)
            added.append({"path": entry, "after": anchor})
    present = set(now)
    removed = [entry for entry in start if entry not in present]
    return {"added": added, "removed": removed} if added or removed else None


def _compose_path(start: list[str], changes: Mapping[str, Any]) -> list[str]:
    """``start`` with ``changes`` applied: added entries go after the entry they
    followed (at the end when that entry is not there), in their order."""
    removed = set(changes.get("removed") or [])
    result = [entry for entry in start if entry not in removed]
    position, previous_anchor = 0, object()
    for item in changes.get("added") or []:
        entry, after = item["path"], item.get("after")
        if entry in result:
            continue
        if after != previous_anchor:
            position = 0 if after is None else (result.index(after) + 1 if after in result else len(result))
            previous_anchor = after
        result.insert(position, entry)
        position += 1
    return result


# -- the environment -----------------------------------------------------------


def _env_changes(start: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, Any] | None:
    now = dict(environ)  # one pass over os.environ, which encodes and decodes on every access
    changed: dict[str, str] = {}
    secret: list[str] = []
    for name, value in now.items():
        if start.get(name) == value:
            continue
        if looks_secret(name, value):
            secret.append(name)
        else:
            changed[name] = value
    unset = [name for name in start if name not in now]  # names only: nothing secret in them
    if not (changed or unset or secret):
        return None
    return {"set": dict(sorted(changed.items())), "unset": sorted(unset), "secret": sorted(secret)}


def _env_items(environ: MutableMapping[str, str], start: Mapping[str, str], env: Mapping[str, Any]) -> Iterator[tuple[str, Callable[[], None]]]:
    """Make the environment the baseline plus ``env``: later changes are undone
    (time travel), except to variables that look like secrets, which are never touched."""
    wanted: dict[str, str] = dict(env.get("set") or {})
    unset = set(env.get("unset") or [])
    for name in list(environ):
        value = environ.get(name, "")
        if name not in wanted and not looks_secret(name, value):
            if name not in start:
                yield f"environment variable {name}", lambda n=name: environ.pop(n, None) and None
            elif name not in unset and start[name] != value:
                wanted[name] = start[name]
    for name, value in start.items():
        if name not in environ and name not in unset and name not in wanted and not looks_secret(name, value):
            wanted[name] = value
    for name, value in sorted(wanted.items()):
        if environ.get(name) != value:
            yield f"environment variable {name}", lambda n=name, v=value: environ.__setitem__(n, v)
    for name in sorted(unset):
        if name in environ:
            yield f"environment variable {name}", lambda n=name: environ.pop(n, None) and None


__all__ = ["STATE_FORMAT", "Baseline", "Process", "SessionState"]
