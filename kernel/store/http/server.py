"""``POST /`` of a Resonate server with the protocol envelope, from synchronous code.

The SDK's ``HttpConnection`` is asynchronous and belongs to the runtime's loop;
the catalog, recovery and the CLI need single requests from any thread.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from kernel.core.errors import EngineConnectionError, PyRepl3Error
from kernel.core.ids import kind_of
from kernel.core.models import PromiseRecord
from kernel.core.redaction import redact, scrub
from kernel.store.protocol import envelope, one_line
from kernel.store.records import decode_value


def token_and_url(raw: str, token: str | None = None) -> tuple[str | None, str]:
    """The bearer token (``token``, else the URL's password) and the URL without userinfo."""
    parts = urlsplit(raw)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return token or parts.password, urlunsplit((parts.scheme, host, parts.path.rstrip("/"), parts.query, "")).rstrip("/")


class Server:
    """One Resonate server, reached with ``urllib`` (no I/O until :meth:`rpc`)."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    def rpc(self, kind: str, data: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url + "/", data=msgspec.json.encode(envelope(kind, data)), headers={"Content-Type": "application/json"}, method="POST"
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 - the configured server
                body = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        except (OSError, urllib.error.URLError) as exc:
            raise EngineConnectionError(
                f"the Resonate server at {redact(self.url)} is unreachable: {scrub(one_line(exc), self.url)}"
            ) from None
        try:
            response = msgspec.json.decode(body)
            return int(response["head"]["status"]), response.get("data")
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            raise EngineConnectionError(f"{redact(self.url)} did not answer as a Resonate server") from None

    def promise(self, promise_id: str) -> dict[str, Any] | None:
        """The promise as the server sends it (wire shape), or None if there is none."""
        status, data = self.rpc("promise.get", {"id": promise_id})
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise PyRepl3Error(f"the Resonate server answered {status} to promise.get {promise_id}")
        return data.get("promise")


def record(p: dict[str, Any], session: str | None) -> PromiseRecord:
    """A catalog record from the wire shape of a promise."""

    def decode(v: Any) -> Any:
        return decode_value((v or {}).get("data") if isinstance(v, dict) else None)

    return {
        "id": p["id"],
        "kind": kind_of(p["id"]),
        "state": p["state"],
        "param": decode(p.get("param")),
        "value": decode(p.get("value")),
        "tags": p.get("tags") or {},
        "timeout_at": p.get("timeoutAt"),  # type: ignore[typeddict-item]
        "created_at": p.get("createdAt"),  # type: ignore[typeddict-item]
        "settled_at": p.get("settledAt"),
        "session": session,
    }


__all__ = ["Server", "record", "token_and_url"]
