"""Which names in a notebook namespace are the user's, and so belong in a checkpoint.

The shell keeps its own record of what it put into the namespace:
IPython's ``shell.user_ns_hidden`` maps every name IPython bound there itself
(``In``, ``Out``, ``exit``, ``quit``, ``get_ipython``, ``open``, ``_dh``, and per
execution ``_i``/``_ii``/``_iii``/``_iN``, ``_``/``__``/``___``/``_N``, ``_ih``,
``_oh``) to the object it bound, and the kernel adds its ``durable`` object
there too. A name counts as the shell's only while it is still bound to that
very object -- IPython's own ``%who`` rule -- so a user who rebinds ``open`` or
``_`` keeps their value, and a user name that merely looks like IPython's
(``_cache``, ``_x1``) is never confused with it.

The checkpointer is handed that mapping (a live view: names IPython adds
later count as soon as it adds them); everything else about IPython's names
is in :data:`_NOT_REGISTERED`, in this one place. One catch: IPython's
``hide_initial_ns`` registers *everything* in ``user_ns`` at app start, the
names the kernel has just restored included, so the checkpointer also keeps
as the user's every name it last saved or restored
(:meth:`kernel.checkpoint.checkpointer.Checkpointer.is_user_name`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_ABSENT = object()

#: Names the shell writes into the namespace *without* registering them in
#: ``user_ns_hidden`` (checked against IPython 9 and ipykernel 7):
#: ``_exit_code`` is assigned straight into ``user_ns`` by ``!cmd`` (``system()``).
#: The ``_iN`` / ``_N`` / ``_oh`` history names need no entry: IPython pushes
#: them with ``push(..., interactive=False)``, which records them as hidden.
_NOT_REGISTERED = frozenset({"_exit_code"})


def is_user_name(name: object, value: Any, hidden: Mapping[str, object]) -> bool:
    """Whether ``name`` (bound to ``value``) is the user's rather than Python's or the shell's.

    ``hidden`` is the shell's ``user_ns_hidden`` (``{}`` outside IPython).
    Dunder names (``__name__``, ``__builtins__``, ``__doc__``, ``__spec__``, ...)
    are Python's module attributes: the language reserves that spelling, and
    IPython does not list them as hidden.
    """
    if not isinstance(name, str):
        return False
    if name.startswith("__") and name.endswith("__") and len(name) >= 4:
        return False
    if name in _NOT_REGISTERED:
        return False
    return hidden.get(name, _ABSENT) is not value


__all__ = ["is_user_name"]
