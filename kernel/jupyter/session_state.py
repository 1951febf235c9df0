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
(``scheme://user:pass@host``). Such variables are stored by name only, so a
restart says which ones to set again.

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
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Bumped when state written by this code could not be applied by older code.
STATE_FORMAT = 1
#: Never stored, whatever their names say: the checkpoint signing key and the engine's tokens.
NEVER_STORED = frozenset({"PYREPL3_KEY", "PYREPL3_TOKEN", "RESONATE_TOKEN"})
#: A variable or trait whose name contains one of these is taken for a secret.
SECRET_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL")
_URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:[^/@\s]+@")
INLINE_BACKENDS = ("inline", "module://matplotlib_inline.backend_inline")


def looks_secret(name: str, value: object = "") -> bool:
    """Whether ``name`` (with ``value``) must never be written to the store."""
    upper = name.upper()
    if upper in NEVER_STORED or any(word in upper for word in SECRET_WORDS):
        return True
    return isinstance(value, str) and _URL_WITH_PASSWORD.search(value) is not None


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

    def __init__(self, shell: Any, notice: Callable[[str], None], process: Process | None = None) -> None:
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
            self.settle()

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
        for section, traits in (_config_changes(restored.config, now.config) or {}).items():
            start.config.setdefault(section, {}).update(traits)

    def _now(self) -> Baseline:
        p = self.process
        return Baseline(cwd=p.getcwd(), path=_paths(p.path), environ=dict(p.environ), config=_config_values(self.shell.config))

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
            "autoreload": lambda: _autoreload_of(self.shell),
            "config": lambda: _config_changes(start.config, _config_values(self.shell.config)),
            "matplotlib": lambda: _matplotlib_of(self.shell),
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
            self.notice(f"the session state of this checkpoint is of a newer format ({state.get('format')}); not restored")
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
            self.notice(f"not restored from the session: {listed}; run those lines again if you need them")
        if secrets := (state.get("env") or {}).get("secret"):
            self.notice(
                "environment variables that look like secrets are never saved; set them again: " + ", ".join(sorted(secrets))
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
            yield f"extension {name}", lambda name=name: _load_extension(shell, name)
        if autoreload := state.get("autoreload"):
            yield from _autoreload_items(shell, autoreload)
        for section, traits in (state.get("config") or {}).items():
            for trait, value in traits.items():
                yield f"%config {section}.{trait}", lambda s=section, t=trait, v=value: _set_config(shell, s, t, v)
        if mpl := state.get("matplotlib"):
            yield f"matplotlib backend {mpl.get('backend')}", lambda: _activate_matplotlib(shell, mpl)


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


def _env_changes(start: Mapping[str, str], now: Mapping[str, str]) -> dict[str, Any] | None:
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


# -- IPython extensions and autoreload ---------------------------------------------


def _load_extension(shell: Any, name: str) -> None:
    if name in shell.extension_manager.loaded:
        return
    if shell.extension_manager.load_extension(name) == "no load function":
        raise ImportError(f"{name} has no load_ipython_extension()")


def _autoreload_magics(shell: Any) -> Any:
    return shell.magics_manager.registry.get("AutoreloadMagics")


def _autoreload_of(shell: Any) -> dict[str, Any] | None:
    """``%autoreload``'s mode (as its argument spells it) and the ``%aimport`` lists."""
    magics = _autoreload_magics(shell)
    if magics is None:
        return None
    r = magics._reloader
    mode = "off" if not r.enabled else "explicit" if not r.check_all else "complete" if r.autoload_obj else "all"
    deduper = getattr(r, "deduper_reloader", None)
    return {
        "mode": mode,
        "full": deduper is not None and not deduper.enabled,
        "hide_errors": bool(getattr(r, "hide_errors", False)),
        "aimport": sorted(r.modules),
        "skip": sorted(r.skip_modules),
    }


def _autoreload_items(shell: Any, autoreload: Mapping[str, Any]) -> Iterator[tuple[str, Callable[[], None]]]:
    flags = (" --full" if autoreload.get("full") else "") + (" --hide-errors" if autoreload.get("hide_errors") else "")
    line = f"{autoreload['mode']}{flags}"

    def mode() -> None:
        if _autoreload_magics(shell) is None:
            raise RuntimeError("the autoreload extension is not loaded")
        shell.run_line_magic("autoreload", line)

    yield f"%autoreload {line}", mode
    for module in autoreload.get("aimport") or []:
        yield f"%aimport {module}", lambda m=module: shell.run_line_magic("aimport", m)
    for module in autoreload.get("skip") or []:
        yield f"%aimport -{module}", lambda m=module: shell.run_line_magic("aimport", f"-{m}")


# -- %config -------------------------------------------------------------------

_UNSAVED = object()


def _plain(value: Any) -> Any:
    """``value`` as JSON data (sets and tuples become lists, which traitlets casts
    back), or ``_UNSAVED`` when it is something else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _UNSAVED
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        if any(v is _UNSAVED for v in items):
            return _UNSAVED
        if isinstance(value, (set, frozenset)):
            try:
                items.sort()
            except TypeError:
                return _UNSAVED
        return items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        plain = {k: _plain(v) for k, v in value.items()}
        return _UNSAVED if any(v is _UNSAVED for v in plain.values()) else plain
    return _UNSAVED


def _config_values(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The shell's config (``%config`` merges into it) as JSON data: section -> trait -> value."""
    values: dict[str, dict[str, Any]] = {}
    for section, traits in config.items():
        if not section[:1].isupper() or not isinstance(traits, Mapping):
            continue
        plain = {}
        for trait, value in traits.items():
            if isinstance(value, Mapping) and trait[:1].isupper():
                continue  # a nested section (Class.Other.trait), not a value
            converted = _plain(value)
            if converted is not _UNSAVED and not looks_secret(trait):
                plain[trait] = converted
        if plain:
            values[section] = plain
    return values


def _config_changes(start: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]] | None:
    missing = object()
    changes = {}
    for section, traits in now.items():
        before = start.get(section, {})
        changed = {t: v for t, v in traits.items() if before.get(t, missing) != v}
        if changed:
            changes[section] = changed
    return changes or None


def _set_config(shell: Any, section: str, trait: str, value: Any) -> None:
    """What ``%config Section.trait = value`` does: update every configurable of the shell."""
    from traitlets.config import Config

    cfg = Config({section: {trait: value}})
    for configurable in list(shell.configurables):
        configurable.update_config(cfg)


# -- matplotlib ----------------------------------------------------------------


def _matplotlib_of(shell: Any) -> dict[str, Any] | None:
    """The backend pyplot uses, and whether IPython's integration (``%matplotlib``,
    or ipykernel's inline default) is on. Nothing while pyplot is not imported."""
    mpl = sys.modules.get("matplotlib")
    plt = sys.modules.get("matplotlib.pyplot")
    if mpl is None or plt is None:
        return None
    if getattr(mpl, "__version_info__", (0,)) >= (3, 10):
        backend = mpl.get_backend(auto_select=False)
    else:
        backend = mpl.rcParams._get("backend")
    if not isinstance(backend, str) or not backend:
        return None
    # IPython's activate_matplotlib wraps draw_if_interactive to see whether show() was called.
    return {"backend": backend, "ipython": hasattr(plt.draw_if_interactive, "called")}


def _activate_matplotlib(shell: Any, mpl: Mapping[str, Any]) -> None:
    backend = mpl["backend"]
    if mpl.get("ipython"):
        with _kernel_findable(shell):
            shell.enable_matplotlib("inline" if backend in INLINE_BACKENDS else backend)
    else:
        import matplotlib

        matplotlib.use(backend)


@contextmanager
def _kernel_findable(shell: Any) -> Iterator[None]:
    """ipykernel's ``enable_gui`` finds the kernel through the running application,
    which has none yet while the kernel is being built (a restore at start): lend it."""
    from traitlets.config import Application

    app = Application.instance() if Application.initialized() else None
    kernel = getattr(shell, "kernel", None)
    lend = app is not None and kernel is not None and getattr(app, "kernel", False) is None
    if lend:
        app.kernel = kernel
    try:
        yield
    finally:
        if lend and app.kernel is kernel:
            app.kernel = None


__all__ = ["NEVER_STORED", "SECRET_WORDS", "STATE_FORMAT", "Baseline", "Process", "SessionState", "looks_secret"]
