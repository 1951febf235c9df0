"""The frontend's stdin channel, as durable prompts use it."""

from __future__ import annotations

import logging
import sys

import zmq
from ipykernel.kernelbase import Kernel

log = logging.getLogger(__name__)


class FrontendStdin:
    """The stdin channel of the current request, as :mod:`kernel.durable.prompts` uses it.

    ipykernel's own ``_input_request`` blocks until the frontend replies; a
    durable prompt must also notice an out-of-band answer or its timeout, so
    this polls in short slices instead (same purge/send/recv steps).
    """

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.ident = kernel._get_shell_context_var(kernel._shell_parent_ident)
        self.parent = kernel.get_parent("shell")

    def send_request(self, prompt: str, password: bool) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        sock = self.kernel.stdin_socket
        while True:  # purge stale replies (e.g. a late answer to an earlier prompt)
            try:
                sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError as e:
                if e.errno == zmq.EAGAIN:
                    break
                raise
        self.kernel.session.send(sock, "input_request", {"prompt": prompt, "password": password}, self.parent, ident=self.ident)

    def poll_reply(self, timeout: float) -> str | None:
        sock = self.kernel.stdin_socket
        rlist, _, xlist = zmq.select([sock], [], [sock], timeout)
        if not (rlist or xlist):
            return None
        _ident, reply = self.kernel.session.recv(sock)
        if reply is None:
            return None
        try:
            return str(reply["content"]["value"])
        except (KeyError, TypeError):
            log.error("bad input_reply: %s", reply)
            return ""
