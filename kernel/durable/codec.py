"""What PyREPL3 lets through the SDK's codec: no pickles in promise values."""

from __future__ import annotations

import json


class NoPickledErrors:
    """The SDK codec's ``Encryptor`` seam, used to keep pickles out of promise values.

    The SDK stores a rejected promise's exception as JSON plus a
    ``__py_pickle`` payload, and unpickles that payload when a result is
    awaited: whoever can write the engine's promises could then run code in
    this kernel. PyREPL3 carries errors as JSON (:class:`CellError`), so the
    payload is dropped both on the way out and on the way in. The byte search
    keeps the common case (no error payload) a no-op.
    """

    MARK = b'"__py_pickle"'

    def encrypt(self, data: bytes) -> bytes:
        return self._strip(data)

    def decrypt(self, data: bytes) -> bytes:
        return self._strip(data)

    def _strip(self, data: bytes) -> bytes:
        if self.MARK not in data:
            return data
        value = json.loads(data)
        if isinstance(value, dict):
            value.pop("__py_pickle", None)
        return json.dumps(value).encode()
