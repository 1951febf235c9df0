"""A TCP relay that can be frozen: the network stall of the fault suite, for real.

    with Relay("127.0.0.1", 5432) as relay:      # listens on relay.port
        relay.freeze()   # stop moving bytes; every connection stays open
        relay.thaw()     # move them again, in order, including what piled up

Frozen, the relay neither reads nor writes: bytes a client sends pile up in its
socket buffers, exactly as when a link between two machines stops carrying
packets while neither end notices. New connections are accepted (and connected
upstream) but carry nothing until the thaw. When one side closes, the relay
forwards everything it still has and then half-closes the other side, so a
request sent by a process that died meanwhile still reaches the server -- the
"late create" of issue 10, point 3.

Threads, not asyncio: each direction of each connection is a blocking pump that
checks the gate before every read and every write.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

#: Bytes read at a time.
CHUNK = 65536
#: Seconds a pump waits on the gate before it looks whether the relay is closing.
POLL = 0.2


class Relay:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closing = threading.Event()
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pumps = 0

    # -- control -------------------------------------------------------------------

    def start(self) -> Relay:
        self._spawn(self._accept)
        return self

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    @property
    def connections(self) -> int:
        """Connections with a direction still carrying (or holding) bytes."""
        with self._lock:
            return (self._pumps + 1) // 2

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a postgresql:// URL to the upstream) pointed at this relay instead."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(dsn)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit((parts.scheme, f"{userinfo}{self.host}:{self.port}", parts.path, parts.query, parts.fragment))

    def close(self) -> None:
        self._closing.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # -- the pumps ---------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="relay")  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _gate(self) -> bool:
        """Wait until bytes may move; False once the relay is closing."""
        while not self._flowing.wait(POLL):
            if self._closing.is_set():
                return False
        return not self._closing.is_set()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
                self._pumps += 2
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._gate():
                data = src.recv(CHUNK)
                if not self._gate():
                    return
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # pass the end on, after everything before it
            with self._lock:
                self._pumps -= 1
