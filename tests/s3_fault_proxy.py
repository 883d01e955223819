"""A fault-injecting, latency-shaping HTTP proxy in front of the moto S3 server (127.0.0.1).

boto3 talks to it as if it were S3; it forwards every request to moto unless a fault is
due, in which case it answers ``503 SlowDown`` (S3's throttling answer), closes the
connection without answering, or forwards and then cuts the response body half-way. Faults
are chosen per request from a hash of the seed, the request (method, path, range) and how
many times it was made before, so the same run meets the same faults however the threads of
the daemon and the handler interleave.

``latency_s`` and ``bytes_per_s`` make loopback behave like S3 seen from a function in its
region: every answer waits ``latency_s`` before its first byte, and request and response
bodies move at ``bytes_per_s`` per connection (docs/BENCHMARKS.md says which figures and
where they come from).

``refuse_signed`` names a bucket that, like the public archive read with a role that has no
rights on it, refuses every signed request (an ``Authorization`` header or a presigned
``X-Amz-Signature``) with ``403 AccessDenied``, and serves unsigned ones.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from standin.loopback import LoopbackHTTPServer

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message></Error>")


class S3FaultProxy:
    """``with S3FaultProxy(moto_url, rate=0.3, seed=1) as proxy: ... proxy.url ...``.

    ``rate`` is the chance that a request meets a fault; ``kinds`` the faults drawn from
    ("slowdown", "drop", "cut"); ``methods`` limits faults to those HTTP methods.
    ``latency_s``: added before every answer's first byte; ``bytes_per_s``: the pace of
    request and response bodies on each connection (0 = as fast as loopback goes).

    Rights instead of faults: ``forbid_missing`` answers a HEAD or GET of a missing key
    403 instead of 404, and ``forbid_list`` refuses every listing with 403 AccessDenied:
    together, what a reader without ``s3:ListBucket`` meets (S3 API reference, HeadObject).
    """

    def __init__(self, upstream: str, *, rate: float = 0.0, seed: int = 1,
                 kinds: tuple[str, ...] = ("slowdown", "drop", "cut"),
                 methods: tuple[str, ...] = ("GET", "PUT", "HEAD", "DELETE"),
                 latency_s: float = 0.0, bytes_per_s: float = 0.0,
                 refuse_signed: str | None = None, forbid_missing: bool = False,
                 forbid_list: bool = False) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.latency_s = latency_s
        self.bytes_per_s = bytes_per_s
        self.kinds = kinds
        self.methods = methods
        self.refuse_signed = refuse_signed
        self.forbid_missing = forbid_missing
        self.forbid_list = forbid_list
        self.counts: Counter[str] = Counter()
        self._seed = seed
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = LoopbackHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's endpoint URL (what AWS_ENDPOINT_URL is set to)."""
        return self._server.url

    def fault_for(self, method: str, path: str, byte_range: str) -> str | None:
        """The fault this request meets, if any (and count it)."""
        # Without the bucket (tests name theirs at random), so a seed means the same faults.
        request = f"{method} {path.lstrip('/').partition('/')[2]} {byte_range}"
        with self._lock:
            self.counts[f"requests {method}"] += 1
            if method == "GET" and "list-type=" in path:
                self.counts["requests LIST"] += 1  # a ListObjectsV2 (also counted as a GET)
            self._seen[request] += 1
            digest = hashlib.sha256(f"{self._seed}|{request}|{self._seen[request]}".encode())
            draw = int.from_bytes(digest.digest()[:8], "big") / 2**64
            if method not in self.methods or draw >= self.rate:
                return None
            kinds = [k for k in self.kinds if not (k == "cut" and method == "HEAD")]
            kind = kinds[int(draw / self.rate * len(kinds))]
            self.counts[f"{kind} {method}"] += 1
            return kind

    def refuses(self, path: str, authorization: str | None) -> bool:
        """Whether a request is a signed one to the ``refuse_signed`` bucket (and count
        which kind of request each one to that bucket was)."""
        if self.refuse_signed is None:
            return False
        parts = urlsplit(path)
        if parts.path.lstrip("/").split("/", 1)[0] != self.refuse_signed:
            return False
        signed = bool(authorization) or "X-Amz-Signature=" in parts.query
        with self._lock:
            self.counts["archive signed" if signed else "archive unsigned"] += 1
        return signed

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()  # also hangs up on kept-alive connections


def _handler(proxy: S3FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _paced_write(self, data: bytes) -> None:
            if not proxy.bytes_per_s:
                self.wfile.write(data)
                return
            start, chunk = time.monotonic(), 64 * 1024
            for i in range(0, len(data), chunk):
                self.wfile.write(data[i:i + chunk])
                due = start + (i + chunk) / proxy.bytes_per_s - time.monotonic()
                if due > 0:
                    time.sleep(due)

        def _error(self, status: int, reason: str, body: bytes) -> None:
            """S3's answer to a refused request: an XML error document (none to a HEAD)."""
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self) -> None:
            body = self._body()
            if body and proxy.bytes_per_s:
                time.sleep(len(body) / proxy.bytes_per_s)  # the upload at the same pace
            if proxy.refuses(self.path, self.headers.get("Authorization")):
                self._error(403, "Forbidden", ACCESS_DENIED)
                return
            fault = proxy.fault_for(self.command, self.path, self.headers.get("Range", ""))
            if proxy.forbid_list and self.command == "GET" and "list-type=" in self.path:
                self._error(403, "Forbidden", ACCESS_DENIED)
                return
            if fault == "drop":
                # Nothing back at all: the client sees the connection closed.
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if fault == "slowdown":
                self._error(503, "Slow Down", SLOWDOWN)
                return
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in ("transfer-encoding", "connection", "content-length")}
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body if body else None,
                                 headers={**headers, "Content-Length": str(len(body))})
                resp = upstream.getresponse()
                data = resp.read()
            finally:
                upstream.close()
            if proxy.forbid_missing and resp.status == 404 and self.command in ("GET", "HEAD"):
                self._error(403, "Forbidden", ACCESS_DENIED)
                return
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length",
                                     "date", "server"):
                    self.send_header(k, v)
            # A HEAD answer has no body but says how long the object is.
            length = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(length or 0))
            if proxy.latency_s:
                time.sleep(proxy.latency_s)  # time to first byte
            self.end_headers()
            if self.command == "HEAD":
                return
            if fault == "cut" and len(data) > 1:
                # Promise the whole body, send half, hang up: a dropped connection mid-read.
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self._paced_write(data)

        do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _serve  # noqa: N815 (http.server names)

    return Handler
