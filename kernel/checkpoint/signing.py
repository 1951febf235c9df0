"""HMAC signatures for checkpoint data, as Jupyter signs its messages.

A checkpoint is a pickle: whoever can write the store could make every kernel
that restores it run their code. Every manifest is therefore signed with a
key only the user has (it names each blob by its SHA-256, which the blob store
checks, so that covers the blobs too), and restoring refuses anything unsigned
or signed with another key, naming what it refused.

The key is ``PYREPL3_KEY`` (hex or any string), else the file
``<jupyter data dir>/pyrepl3/key`` (created 0600 on first use).

A signature alone proves only that this key signed *some* bytes: copied to
another promise (an old checkpoint to a higher sequence number, one session's
checkpoint into another session, one step's result to another step) it would
still verify. :class:`Sealer` therefore binds each signature to where the
value belongs -- the session and the promise id it is stored under -- and the
reader checks it against the id it read the value from.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from kernel.core.clock import SYSTEM, Clock
from kernel.core.errors import AuthenticationError, ConfigurationError

SIGNATURE_BYTES = 32
#: What a bound signature covers, stored next to it (``"sealed"``): a value signed
#: before signatures were bound to their promise has none and is refused.
SEAL_FORMAT = 2


class SignatureError(AuthenticationError):
    """Data is unsigned or its signature does not match this key (RES005)."""


def load_key(configured: str, key_file: Path, *, clock: Clock = SYSTEM) -> bytes:
    """The signing key: ``configured`` (``PYREPL3_KEY``), else the key file (made 0600 if missing)."""
    if configured.strip():
        return configured.strip().encode()
    if key_file.exists():
        mode = key_file.stat().st_mode & 0o777
        if mode & 0o077:
            msg = f"the signing key file {key_file} is readable by others (mode {mode:o}); run chmod 600 on it"
            raise ConfigurationError(msg)
        key = key_file.read_bytes().strip()
        if not key:
            # Another kernel may have created it a moment ago and not written it yet.
            key = clock.wait_for(lambda: key_file.read_bytes().strip(), 1.0) or b""
        if not key:
            raise ConfigurationError(f"the signing key file {key_file} is empty; delete it to make a new key")
        return key
    key_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another kernel made it just now
        return load_key(configured, key_file, clock=clock)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_hex(32).encode())
    return key_file.read_bytes().strip()


class Signer:
    def __init__(self, key: bytes) -> None:
        if not key:
            raise ConfigurationError("the signing key (PYREPL3_KEY) is empty")
        self._key = key

    def digest(self, *parts: bytes | memoryview) -> str:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest()

    def verify(self, signature: str | None, what: str, *parts: bytes | memoryview) -> None:
        if not signature:
            raise SignatureError(f"{what} is not signed; refusing to load it")
        if not hmac.compare_digest(signature, self.digest(*parts)):
            raise SignatureError(f"{what} has a wrong signature (tampered with, or signed with another key); refusing to load it")


def canonical(value: Any) -> bytes:
    """The bytes a signature covers: JSON with sorted keys and no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Sealer:
    """Signs plain-JSON values bound to one session and the promise that holds them.

    The signature covers ``[format, session, promise_id, body]`` as canonical
    JSON, so a sealed value verifies only under the promise id and session it
    was written for. A sealed value is the body plus ``"signature"`` and
    ``"sealed"`` (the format)."""

    def __init__(self, signer: Signer, session: str) -> None:
        self.signer = signer
        self.session = session

    def signature(self, promise_id: str, body: Any) -> str:
        return self.signer.digest(canonical([SEAL_FORMAT, self.session, promise_id, body]))

    def seal(self, promise_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with its bound signature added."""
        return {**body, "signature": self.signature(promise_id, body), "sealed": SEAL_FORMAT}

    def unseal(self, promise_id: str, sealed: Any, what: str) -> dict[str, Any]:
        """The body of ``sealed`` read from ``promise_id``; :class:`SignatureError` unless
        this key sealed it for this session and this promise id."""
        if not isinstance(sealed, dict):
            raise SignatureError(f"{what} ({promise_id}) is not signed; refusing to load it")
        body = {k: v for k, v in sealed.items() if k not in ("signature", "sealed")}
        signature = sealed.get("signature")
        if signature and sealed.get("sealed") != SEAL_FORMAT:
            raise SignatureError(
                f"{what} ({promise_id}) was signed by an older PyREPL3 without binding the signature to "
                "its session and promise id; refusing to load it"
            )
        self.signer.verify(
            signature,
            f"{what} ({promise_id}, session {self.session!r})",
            canonical([SEAL_FORMAT, self.session, promise_id, body]),
        )
        return body
