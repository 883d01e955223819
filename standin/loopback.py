"""The HTTP server under the stand-ins: threaded, and closing it also ends its connections.

Clients keep connections alive between requests, so a handler thread can sit waiting for
the next request long after ``shutdown()``; a stand-in that is stopped (MAST "going down"
in a fault test) or a test that has finished would otherwise leave those threads and
sockets behind. ``server_close`` hangs up on every connection still open.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any


class LoopbackHTTPServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` (daemon threads) that tracks its open connections."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, where clients reach it."""
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def close_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().close_request(request)

    def server_close(self) -> None:
        """Stop listening, then hang up on the connections still open."""
        super().server_close()
        with self._connections_lock:
            still_open = list(self._connections)
        for conn in still_open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
