"""Large outputs kept once: a blob referenced by digest, not a copy in every record.

A cell's outputs are stored with its execution (the ``exec:`` promise's value) and in the
outcome blob its checkpoint names; ``%durable outputs N`` publishes them again inside a new
cell, whose outputs are stored in turn. For a 50 MB ``print`` that is 50 MB per copy. So
before an outcome is stored, every output text (a stream's ``text``, a string under a
display's ``data``) larger than ``PYREPL3_OUTPUT_BLOB_BYTES`` goes into a content-addressed
blob and the output keeps only its digest (``"pyrepl3_blobs": {"text": digest}`` or
``{"data/<mime>": digest}``, the field itself emptied). Content addressing makes every
later copy (a replay, a re-run printing the same) cost no bytes. Whoever shows stored
outputs resolves them first (:func:`resolve`): a replayed msg_id, ``%durable outputs``,
``pyrepl3 export``. ``pyrepl3 show`` prints the reference as stored.

Such a blob is live as long as the execution is (forever): the kernel notes it
(:meth:`kernel.store.base.Reclaimer.note_output_blobs`) before the outcome that names it is
stored, and garbage collection never takes a noted blob.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from kernel.store.base import BlobStore
from kernel.store.digests import is_digest

log = logging.getLogger(__name__)

#: The key an output carries its blob references under.
KEY = "pyrepl3_blobs"
#: The default of PYREPL3_OUTPUT_BLOB_BYTES.
LIMIT = 1 << 20


def externalize(outputs: list[dict[str, Any]], blobs: BlobStore, limit: int) -> tuple[list[dict[str, Any]], list[str]]:
    """``outputs`` with every text over ``limit`` bytes in a blob; and the digests written.
    Outputs without one are returned as they are (no copy)."""
    if not limit:
        return outputs, []
    out: list[dict[str, Any]] = []
    digests: list[str] = []
    for output in outputs:
        fields = [(path, text) for path, text in _texts(output) if len(text) > limit // 4 and len(text.encode()) > limit]
        if not fields:
            out.append(output)
            continue
        moved = copy.deepcopy({k: v for k, v in output.items() if k != "data"})
        if "data" in output:
            moved["data"] = dict(output["data"])
        refs = dict(output.get(KEY) or {})
        for path, text in fields:
            digest = blobs.put(text.encode())
            refs[path] = digest
            digests.append(digest)
            if path == "text":
                moved["text"] = ""
            else:
                moved["data"][path.removeprefix("data/")] = ""
        moved[KEY] = refs
        out.append(moved)
    return out, digests


def resolve(outputs: list[dict[str, Any]], blobs: BlobStore | None) -> list[dict[str, Any]]:
    """``outputs`` as they were shown: every reference replaced by its blob's text (one that
    cannot be read says so in its place, naming the blob)."""
    if not any(KEY in o for o in outputs):
        return outputs
    out = []
    for output in outputs:
        refs = output.get(KEY)
        if not isinstance(refs, dict):
            out.append(output)
            continue
        whole = {k: v for k, v in output.items() if k != KEY}
        if "data" in whole:
            whole["data"] = dict(whole["data"])
        for path, digest in refs.items():
            text = _text_of(digest, blobs)
            if path == "text":
                whole["text"] = text
            elif path.startswith("data/") and "data" in whole:
                whole["data"][path.removeprefix("data/")] = text
        out.append(whole)
    return out


def referenced(outputs: list[dict[str, Any]]) -> list[str]:
    """The blobs ``outputs`` name."""
    return [d for o in outputs if isinstance(o.get(KEY), dict) for d in o[KEY].values() if is_digest(d)]


def _texts(output: dict[str, Any]) -> list[tuple[str, str]]:
    if output.get("output_type") == "stream" and isinstance(output.get("text"), str):
        return [("text", output["text"])]
    data = output.get("data")
    if isinstance(data, dict):
        return [(f"data/{mime}", value) for mime, value in data.items() if isinstance(value, str)]
    return []


def _text_of(digest: Any, blobs: BlobStore | None) -> str:
    if blobs is None or not is_digest(digest):
        return f"[PyREPL3: this output is in blob {digest}, which cannot be read here]"
    try:
        return bytes(blobs.get(digest)).decode()
    except Exception as exc:  # noqa: BLE001 - a missing or corrupt blob must not hide the other outputs
        log.warning("stored output blob %s is unreadable: %s", digest, exc)
        return f"[PyREPL3: this output (blob {digest}) could not be read: {exc}]"


__all__ = ["KEY", "LIMIT", "externalize", "referenced", "resolve"]
