"""A MAST portal API stand-in on 127.0.0.1 that real astroquery talks to.

It answers the requests astroquery's ``Observations`` and its cloud helpers make, in MAST's
shapes:

* ``POST /portal/Mashup/Mashup.asmx/columnsconfig`` (form ``colConfigId=<service>``):
  the columns config of ``Mast.Caom.Cone`` (astroquery's recorded answer) or of
  ``Mast.Caom.Products``; ``{}`` for anything else (MAST "returns nothing" then).
* ``POST /api/v0/invoke`` (form ``request=<url-encoded JSON>``, GET with a
  ``request`` query parameter works too) for ``Mast.Caom.Filtered`` (filters over
  the modelled columns; ``COUNT_BIG(*)``) and ``Mast.Caom.Products`` (comma-separated
  obsids). Answers are ``{"status", "msg", "data", "fields", "paging"}`` and are paged
  by the request's ``pagesize``/``page`` exactly as MAST pages.
  Anything else is a MAST-shaped ``ERROR``.
* ``GET /api/v0.1/path_lookup/?uri=...&uri=...`` (what ``astroquery.mast.utils
  .get_cloud_paths`` sends, 40 URIs a request): ``{uri: {"status_code": 200, "path":
  "/hst/public/<4>/<folder>/<file>"}}``, or ``404`` and ``null`` for a URI the archive does
  not hold (astroquery's recorded ``mast_relative_path.json`` has both shapes). The folder
  is the one the archive files the observation under (`Archive.cloud_path`).

Faults a test can arm (`FaultInjector`): HTTP 500/503, a hang, truncated or malformed
JSON, an HTML error page, a dropped connection, an empty page in a paged answer, an
``ERROR`` status, extra ``EXECUTING`` answers. Every request is logged
(`MastStandin.log`).

Run it in its own process for benchmarks::

    python -m standin.mast --exposures 150000 --seed 1 --port 0

prints its URL on the first stdout line and serves until SIGTERM/SIGINT. A small
control API (``/standin/...``) lets another process release exposures, arm faults and
read the counters.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ipaddress
import json
import math
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standin.archive import Archive, FilterError, _data
from standin.loopback import LoopbackHTTPServer

__all__ = ["FAULT_KINDS", "Fault", "FaultInjector", "MastStandin", "RequestRecord", "main"]

INVOKE_PATH = "/api/v0/invoke"
COLUMNS_CONFIG_PATH = "/portal/Mashup/Mashup.asmx/columnsconfig"
PATH_LOOKUP_PATH = "/api/v0.1/path_lookup/"
_ENDPOINTS = ("invoke", "columnsconfig", "path_lookup")

#: Fault kinds and what astroquery (0.4.11) does with them.
FAULT_KINDS: dict[str, str] = {
    "http_500": "HTTP 500 with an HTML body -> requests.HTTPError from raise_for_status",
    "http_503": "HTTP 503 + Retry-After -> requests.HTTPError",
    "hang": "answer only after `seconds` -> astroquery TimeoutError if its TIMEOUT is "
            "shorter; requests ReadTimeout if the session imposes a socket timeout",
    "truncated": "HTTP 200, JSON cut in half, Content-Length matching -> JSONDecodeError",
    "malformed": "HTTP 200, syntactically broken JSON -> JSONDecodeError",
    "html": "HTTP 200 with an HTML maintenance page -> JSONDecodeError",
    "disconnect": "headers promise the full body, half is sent, connection closed -> "
                  "requests ChunkedEncodingError (IncompleteRead)",
    "empty_page": "a page with data [] while paging still promises rows -> astroquery "
                  "silently returns fewer rows",
    "error_status": "HTTP 200 with status ERROR -> astroquery RemoteServiceError (on the "
                    "columns config: an empty {} -> astroquery InvalidQueryError)",
    "executing": "status EXECUTING (no data): astroquery polls again (long poll)",
}

_CAOM_SERVICES = ("Mast.Caom.Cone", "Mast.Caom.Filtered", "Mast.Caom.Filtered.Position")
_PRODUCTS = "Mast.Caom.Products"
_FILTERED = "Mast.Caom.Filtered"


@dataclass
class Fault:
    """One armed fault: fires on matching requests ``times`` times (None: until disarmed)."""

    kind: str
    times: int | None = 1
    service: str | None = None  #: match the MAST service (or the colConfigId)
    page: int | None = None  #: match the requested page
    endpoint: str | None = None  #: "invoke", "columnsconfig" or "path_lookup"
    seconds: float = 0.0  #: for "hang"
    message: str = "Error executing the request (fault injected by the stand-in)"
    fired: int = 0
    id: int = 0

    def matches(self, endpoint: str, service: str | None, page: int | None) -> bool:
        """Whether this fault applies to a request."""
        if self.endpoint is not None and self.endpoint != endpoint:
            return False
        if self.service is not None and self.service != service:
            return False
        return self.page is None or self.page == page


class FaultInjector:
    """Thread-safe list of armed faults; the first matching one fires."""

    def __init__(self) -> None:
        """Start with nothing armed."""
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = 0

    def arm(
        self,
        kind: str,
        *,
        times: int | None = 1,
        service: str | None = None,
        page: int | None = None,
        endpoint: str | None = None,
        seconds: float = 0.0,
        message: str | None = None,
    ) -> Fault:
        """Arm a fault of ``kind`` (see `FAULT_KINDS`) for the next ``times`` matching requests.

        ``times=None`` keeps it armed until `disarm`. ``service``, ``page`` and
        ``endpoint`` narrow which requests it hits (``page`` counts from 1 like MAST).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if endpoint is not None and endpoint not in _ENDPOINTS:
            raise ValueError(f"endpoint must be one of {_ENDPOINTS} or None")
        with self._lock:
            self._ids += 1
            fault = Fault(kind, times, service, page, endpoint, float(seconds), id=self._ids)
            if message is not None:
                fault.message = message
            self._faults.append(fault)
        return fault

    def disarm(self, fault: Fault | None = None) -> None:
        """Disarm one fault, or all of them."""
        with self._lock:
            if fault is None:
                self._faults.clear()
            else:
                self._faults = [f for f in self._faults if f.id != fault.id]

    @property
    def armed(self) -> list[Fault]:
        """The faults still armed."""
        with self._lock:
            return list(self._faults)

    def take(self, endpoint: str, service: str | None, page: int | None) -> Fault | None:
        """Consume and return the first fault matching this request, if any."""
        with self._lock:
            for f in self._faults:
                if f.matches(endpoint, service, page):
                    f.fired += 1
                    if f.times is not None and f.fired >= f.times:
                        self._faults.remove(f)
                    return f
        return None


@dataclass
class RequestRecord:
    """What the stand-in saw and answered for one HTTP request."""

    at: float
    endpoint: str  #: "invoke", "columnsconfig", "path_lookup", "control" or "other"
    service: str | None
    page: int | None = None
    pagesize: int | None = None
    params: dict[str, Any] | None = None
    http_status: int = 200
    mast_status: str | None = None
    rows: int = 0
    rows_filtered: int = 0
    fault: str | None = None
    seconds: float = 0.0  #: handler time until the answer was ready to send
    bytes: int = 0  #: body bytes sent (or to be sent)


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None  # send only this many body bytes, then close
    record: dict[str, Any] = field(default_factory=dict)


class MastStandin:
    """The HTTP server: ``with MastStandin(archive) as mast: ... mast.url ...``."""

    def __init__(
        self,
        archive: Archive,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        executing_polls: int = 0,
        log_size: int = 100_000,
    ) -> None:
        """Serve ``archive`` on ``host:port`` (loopback only; port 0 picks a free one).

        ``executing_polls`` > 0 answers every distinct request that many times with
        ``EXECUTING`` before the real answer, exercising astroquery's long-poll loop.
        """
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the MAST stand-in binds to loopback only, not {host}")
        self.archive = archive
        self.faults = FaultInjector()
        self.executing_polls = executing_polls
        self._host, self._port = host, port
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=log_size)
        self._counts: collections.Counter[str] = collections.Counter()
        self._log_lock = threading.Lock()
        self._polls: dict[str, int] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        #: Tracebacks of requests the stand-in itself failed on (answered with HTTP 500).
        self.errors: list[str] = []

    # -------------------------------------------------------------- lifecycle
    def start(self) -> MastStandin:
        """Bind and serve in a background thread; return self.

        After a `stop`, `start` binds the same port again, so a client configured with
        `url` finds MAST "back up" where it was.
        """
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self._host, self._port), _Handler, self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="mast-standin", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wake hung handlers, close open connections, release the port."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> MastStandin:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the server."""
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (what ``mast.url`` is set to)."""
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return self._server.url

    # ------------------------------------------------------------ inspection
    @property
    def log(self) -> list[RequestRecord]:
        """Every request so far (the latest ``log_size``), oldest first."""
        with self._log_lock:
            return list(self._log)

    def count(self, service: str | None = None, *, endpoint: str | None = None) -> int:
        """Requests seen, optionally for one service and/or endpoint."""
        with self._log_lock:
            if service is None and endpoint is None:
                return sum(self._counts.values())
            return sum(
                n for (k, n) in self._counts.items()
                if (service is None or k.split("|", 1)[1] == service)
                and (endpoint is None or k.split("|", 1)[0] == endpoint)
            )

    def reset_log(self) -> None:
        """Forget the request log and counters."""
        with self._log_lock:
            self._log.clear()
            self._counts.clear()

    def _record(self, rec: RequestRecord) -> None:
        with self._log_lock:
            self._log.append(rec)
            self._counts[f"{rec.endpoint}|{rec.service}"] += 1

    # -------------------------------------------------------------- answering
    def answer_columnsconfig(self, form: dict[str, list[str]]) -> _Answer:
        """The columns config for ``colConfigId``."""
        col_id = (form.get("colConfigId") or [""])[0]
        if col_id in _CAOM_SERVICES:
            doc = _data("caom_columnsconfig.json")
        elif col_id == _PRODUCTS:
            doc = _data("products_columnsconfig.json")
        else:
            doc = {}
        return _Answer(200, _dumps(doc), record={"service": col_id})

    def answer_path_lookup(self, query: dict[str, list[str]]) -> _Answer:
        """Where each ``uri`` lives in the cloud, as MAST's path lookup service answers."""
        uris = query.get("uri") or []
        doc = {}
        for uri in uris:
            path = self.archive.cloud_path(uri)
            doc[uri] = {"status_code": 200 if path else 404, "path": path}
        return _Answer(200, _dumps(doc), record={"service": None, "rows": len(uris),
                                                 "params": {"uri": len(uris)}})

    def answer_invoke(self, request_text: str, fault: Fault | None) -> _Answer:
        """Run one ``/api/v0/invoke`` request (after fault selection)."""
        try:
            req = json.loads(request_text)
            if not isinstance(req, dict):
                raise ValueError("request is not a JSON object")
        except ValueError as exc:
            return _error_answer(f"Could not parse the request: {exc}", {"service": None})
        service = req.get("service")
        params = req.get("params") or {}
        try:
            pagesize = int(req.get("pagesize") or 50000)
            page = int(req.get("page") or 1)
        except (TypeError, ValueError):
            return _error_answer("pagesize and page must be integers", {"service": service})
        pagesize = max(1, pagesize)
        page = max(1, page)
        rec = {"service": service, "page": page, "pagesize": pagesize, "params": _short(params)}

        if fault is not None and fault.kind == "error_status":
            return _error_answer(fault.message, rec)
        if fault is not None and fault.kind == "executing":
            return _Answer(200, _executing(), record={**rec, "mast_status": "EXECUTING"})
        if self.executing_polls:
            key = request_text
            with self._log_lock:
                seen = self._polls.get(key, 0)
                if seen < self.executing_polls:
                    self._polls[key] = seen + 1
                    if len(self._polls) > 10_000:  # bounded: forget the oldest
                        self._polls.pop(next(iter(self._polls)))
                    return _Answer(200, _executing(), record={**rec, "mast_status": "EXECUTING"})
                self._polls.pop(key, None)

        try:
            if service == _FILTERED:
                if not isinstance(params, dict):
                    raise FilterError("params must be an object")
                sel = self.archive.select_observations(params.get("filters") or [])
                columns = str(params.get("columns", "*")).strip()
                if columns.replace(" ", "").upper() == "COUNT_BIG(*)":
                    body = _count_body(sel.count)
                    return _Answer(200, body, record={**rec, "mast_status": "COMPLETE",
                                                      "rows": 1, "rows_filtered": 1})
                fields = _data("observation_fields.json")
                total = sel.count
                start = (page - 1) * pagesize
                rows = sel.encode(start, start + pagesize)
                if columns not in ("*", ""):
                    fields, rows = _project(fields, rows, columns)
            elif service == _PRODUCTS:
                obsids = params.get("obsid", "") if isinstance(params, dict) else ""
                if isinstance(obsids, list):  # MAST also accepts a list
                    obsids = ",".join(str(o) for o in obsids)
                sel_p = self.archive.select_products(
                    [o for o in str(obsids).split(",") if o.strip()]
                )
                fields = _data("product_fields.json")
                total = sel_p.count
                start = (page - 1) * pagesize
                rows = sel_p.encode(start, start + pagesize)
            elif service in _CAOM_SERVICES:  # positional queries: real, not modelled
                return _error_answer(f"{service} is not supported by the MAST stand-in", rec)
            else:
                return _error_answer(f"Unknown service: {service}", rec)
        except FilterError as exc:
            return _error_answer(str(exc), rec)

        empty = fault is not None and fault.kind == "empty_page"
        paging = {
            "page": page,
            "pageSize": pagesize,
            "pagesFiltered": math.ceil(total / pagesize),
            "rows": len(rows),
            "rowsFiltered": total,
            "rowsTotal": total,
        }
        body = _complete_body(fields, [] if empty else rows, paging)
        return _Answer(200, body, record={**rec, "mast_status": "COMPLETE",
                                          "rows": 0 if empty else len(rows),
                                          "rows_filtered": total})


class _Server(LoopbackHTTPServer):
    allow_reuse_address = True
    # Many concurrent clients (a benchmark, parallel tests) should not be refused.
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], handler: type, standin: MastStandin) -> None:
        self.standin = standin
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps requests' connection pool useful (every answer has a length).
    protocol_version = "HTTP/1.1"
    server_version = "MastStandin/1"
    timeout = 60  # idle keep-alive connections end after a minute
    server: _Server
    _headers_buffer: list[bytes]  # BaseHTTPRequestHandler's own, written to directly below

    def setup(self) -> None:
        super().setup()
        # Without TCP_NODELAY a response written as headers + body stalls ~40 ms on the
        # client's delayed ACK (Nagle): 50 ms per request instead of 2.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # The request log is the record; stderr chatter would drown test output.
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == INVOKE_PATH:
            self._invoke(parse_qs(parts.query, keep_blank_values=True))
        elif parts.path.rstrip("/") == PATH_LOOKUP_PATH.rstrip("/"):
            self._path_lookup(parse_qs(parts.query, keep_blank_values=True))
        elif parts.path.startswith("/standin/"):
            self._control("GET", parts.path, b"")
        else:
            self._not_found()

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            return
        if parts.path == INVOKE_PATH:
            self._invoke(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
        elif parts.path == COLUMNS_CONFIG_PATH:
            self._columnsconfig(parse_qs(body.decode("utf-8", "replace"),
                                         keep_blank_values=True))
        elif parts.path.startswith("/standin/"):
            self._control("POST", parts.path, body)
        else:
            self._not_found()

    def do_DELETE(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/standin/"):
            self._control("DELETE", parts.path, b"")
        else:
            self._not_found()

    # ----------------------------------------------------------------- parts
    def _read_body(self) -> bytes | None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > 64 * 1024 * 1024:
            self._send(_Answer(400, b"bad Content-Length", "text/plain"))
            return None
        return self.rfile.read(n) if n else b""

    def _invoke(self, form: dict[str, list[str]]) -> None:
        t0 = time.perf_counter()
        st = self.server.standin
        text = (form.get("request") or [""])[0]
        service, page = _peek(text)
        fault = st.faults.take("invoke", service, page)
        rec = {"service": service, "page": page}
        try:
            answer = self._with_fault(fault, lambda: st.answer_invoke(text, fault), rec)
        except Exception:
            # A bug in the stand-in must show up as such, not as a hung client.
            st.errors.append(traceback.format_exc())
            answer = _Answer(500, _html_page(500, "Stand-in error"), "text/html",
                             record={**rec, "mast_status": "STANDIN-ERROR"})
        self._finish(answer, "invoke", fault, t0)

    def _path_lookup(self, query: dict[str, list[str]]) -> None:
        t0 = time.perf_counter()
        st = self.server.standin
        fault = st.faults.take("path_lookup", None, None)
        if fault is not None and fault.kind in ("empty_page", "executing", "error_status"):
            fault = None  # portal-API answers; the path lookup has no such states
        answer = self._with_fault(fault, lambda: st.answer_path_lookup(query),
                                  {"service": None})
        self._finish(answer, "path_lookup", fault, t0)

    def _columnsconfig(self, form: dict[str, list[str]]) -> None:
        t0 = time.perf_counter()
        st = self.server.standin
        col_id = (form.get("colConfigId") or [""])[0]
        fault = st.faults.take("columnsconfig", col_id, None)
        if fault is not None and fault.kind in ("empty_page", "executing"):
            fault = None  # meaningless for a columns config; answer normally
        if fault is not None and fault.kind == "error_status":
            # The columns config service "returns nothing" on an error (astroquery's words).
            answer = _Answer(200, b"{}", record={"service": col_id})
        else:
            answer = self._with_fault(fault, lambda: st.answer_columnsconfig(form),
                                      {"service": col_id})
        self._finish(answer, "columnsconfig", fault, t0)

    def _with_fault(self, fault: Fault | None, produce: Any, rec: dict[str, Any]) -> _Answer:
        st = self.server.standin
        if fault is None:
            return produce()
        kind = fault.kind
        if kind == "hang":
            # Interruptible, so stop() never waits for a hung handler.
            st._stopping.wait(fault.seconds)
            return produce()
        if kind == "http_500":
            return _Answer(500, _html_page(500, "Internal Server Error"), "text/html",
                           record=rec)
        if kind == "http_503":
            return _Answer(503, _html_page(503, "Service Unavailable"), "text/html",
                           headers={"Retry-After": "1"}, record=rec)
        if kind == "html":
            return _Answer(200, _html_page(200, "MAST is down for maintenance"), "text/html",
                           record=rec)
        answer = produce()
        if kind == "truncated":
            answer.body = answer.body[: max(1, len(answer.body) // 2)]
        elif kind == "malformed":
            answer.body = _break_json(answer.body)
        elif kind == "disconnect":
            answer.drop_after = len(answer.body) // 2
        return answer

    def _finish(self, answer: _Answer, endpoint: str, fault: Fault | None, t0: float) -> None:
        st = self.server.standin
        info = answer.record
        # Record before sending: a client that reads the log right after its answer
        # arrives must find this request in it.
        st._record(RequestRecord(
            at=time.time(), endpoint=endpoint, service=info.get("service"),
            page=info.get("page"), pagesize=info.get("pagesize"), params=info.get("params"),
            http_status=answer.status, mast_status=info.get("mast_status"),
            rows=info.get("rows", 0), rows_filtered=info.get("rows_filtered", 0),
            fault=fault.kind if fault else None, seconds=time.perf_counter() - t0,
            bytes=len(answer.body) if answer.drop_after is None else answer.drop_after,
        ))
        self._send(answer)

    def _send(self, answer: _Answer) -> int:
        body = answer.body
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in answer.headers.items():
                self.send_header(k, v)
            if answer.drop_after is not None:
                self.send_header("Connection", "close")
                self.close_connection = True
            # Headers and body in one write (end_headers() would send the headers alone).
            self._headers_buffer.append(b"\r\n")
            head = b"".join(self._headers_buffer)
            self._headers_buffer = []
            if answer.drop_after is not None:
                self.wfile.write(head + body[: answer.drop_after])
                self.wfile.flush()
                # Abort: the client sees a short body and a closed connection.
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return answer.drop_after
            self.wfile.write(head + body)
            return len(body)
        except OSError:
            # The client gave up (timeout) or stop() shut the socket: nothing to answer.
            self.close_connection = True
            return 0

    def _not_found(self) -> None:
        self.server.standin._record(RequestRecord(
            at=time.time(), endpoint="other", service=self.path, http_status=404))
        self._send(_Answer(404, _html_page(404, "Not Found"), "text/html"))

    def _control(self, method: str, path: str, body: bytes) -> None:
        """The cross-process control API (used when the stand-in runs via the CLI)."""
        st = self.server.standin
        try:
            args = json.loads(body) if body else {}
            if path == "/standin/release" and method == "POST":
                exposures = st.archive.release(int(args.get("n", 1)), args.get("at_mjd"))
                out: Any = {"released": [e.obs_id for e in exposures],
                            "n_exposures": st.archive.n_exposures}
            elif path == "/standin/plant" and method == "POST":
                out = asdict(st.archive.plant_bad(str(args["kind"]), at_mjd=args.get("at_mjd")))
            elif path == "/standin/faults" and method == "POST":
                out = asdict(st.faults.arm(**args))
            elif path == "/standin/faults" and method == "DELETE":
                st.faults.disarm()
                out = {"disarmed": True}
            elif path == "/standin/faults" and method == "GET":
                out = [asdict(f) for f in st.faults.armed]
            elif path == "/standin/stats" and method == "GET":
                log = st.log
                out = {
                    "requests": len(log),
                    "by_service": dict(collections.Counter(str(r.service) for r in log)),
                    "bytes": sum(r.bytes for r in log),
                    "server_seconds": sum(r.seconds for r in log),
                    "n_exposures": st.archive.n_exposures,
                    "n_observations": st.archive.n_observations,
                    "last_release": st.archive.last_release,
                }
            elif path == "/standin/log" and method == "DELETE":
                st.reset_log()
                out = {"reset": True}
            else:
                self._not_found()
                return
            answer = _Answer(200, _dumps(out))
        except (ValueError, TypeError, KeyError) as exc:
            answer = _Answer(400, _dumps({"error": str(exc)}))
        self._send(answer)


# ------------------------------------------------------------------ bodies
def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _complete_body(fields: list[dict[str, str]], rows: list[str], paging: dict[str, int]) -> bytes:
    # The rows are pre-encoded JSON objects: join them, never re-serialise.
    head = '{"status":"COMPLETE","msg":"","data":['
    tail = '],"fields":' + json.dumps(fields, separators=(",", ":")) + ',"paging":' + \
        json.dumps(paging, separators=(",", ":")) + "}"
    return (head + ",".join(rows) + tail).encode()


def _count_body(n: int) -> bytes:
    # The shape of astroquery's recorded countsResp.json.
    return _dumps({
        "status": "COMPLETE", "msg": "", "data": [{"Column1": n}],
        "fields": [{"name": "Column1", "type": "string"}],
        "paging": {"page": 1, "pageSize": 1, "pagesFiltered": 1, "rows": 1, "rowsFiltered": 1,
                   "rowsTotal": 1},
    })


def _executing() -> bytes:
    return _dumps({"status": "EXECUTING", "msg": "", "data": [], "fields": [], "paging": {}})


def _error_answer(msg: str, rec: dict[str, Any]) -> _Answer:
    body = _dumps({"status": "ERROR", "msg": msg, "data": [], "fields": [], "paging": {}})
    return _Answer(200, body, record={**rec, "mast_status": "ERROR"})


def _html_page(status: int, title: str) -> bytes:
    return (f"<!DOCTYPE html><html><head><title>{status} {title}</title></head>"
            f"<body><h1>{title}</h1><p>MAST stand-in</p></body></html>").encode()


def _break_json(body: bytes) -> bytes:
    # Drop the first name/value colon: still looks like JSON, fails at the first key.
    i = body.find(b'":')
    return body[: i + 1] + body[i + 2 :] if i >= 0 else b"{" + body


def _project(fields: list[dict[str, str]], rows: list[str], columns: str
             ) -> tuple[list[dict[str, str]], list[str]]:
    """Keep only the requested columns (``"obs_id,obsid"``); rare, so decode/re-encode."""
    want = [c.strip() for c in columns.split(",") if c.strip()]
    by_name = {f["name"]: f for f in fields}
    missing = [c for c in want if c not in by_name]
    if missing:
        raise FilterError(f"unknown columns {missing}")
    out_rows = []
    for r in rows:
        d = json.loads(r)
        out_rows.append(json.dumps({c: d[c] for c in want}, separators=(",", ":")))
    return [by_name[c] for c in want], out_rows


def _peek(text: str) -> tuple[str | None, int | None]:
    """Service and page of a request, for fault matching (None if unparsable)."""
    try:
        req = json.loads(text)
        return req.get("service"), int(req.get("page") or 1)
    except (ValueError, TypeError, AttributeError):
        return None, None


def _short(params: Any) -> Any:
    """Params for the log, with long obsid lists abbreviated."""
    if isinstance(params, dict) and isinstance(params.get("obsid"), str):
        ids = params["obsid"].split(",")
        if len(ids) > 5:
            return {**params, "obsid": f"{','.join(ids[:3])},... ({len(ids)} obsids)"}
    return params


# --------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m standin.mast``: serve a synthetic archive until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(prog="python -m standin.mast", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exposures", type=int, default=1000, help="number of exposures")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1", help="a loopback address")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--start-mjd", type=float, default=None)
    p.add_argument("--end-mjd", type=float, default=None)
    p.add_argument("--obs-id-case", choices=("lower", "upper"), default="lower")
    p.add_argument("--executing-polls", type=int, default=0,
                   help="answer each request this many times with EXECUTING first")
    args = p.parse_args(argv)

    kw: dict[str, Any] = {"seed": args.seed, "obs_id_case": args.obs_id_case}
    if args.start_mjd is not None:
        kw["start_mjd"] = args.start_mjd
    if args.end_mjd is not None:
        kw["end_mjd"] = args.end_mjd
    t0 = time.perf_counter()
    archive = Archive(args.exposures, **kw)
    gen = time.perf_counter() - t0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with MastStandin(archive, args.host, args.port, executing_polls=args.executing_polls) as st:
        print(st.url, flush=True)
        print(f"archive: {archive.n_exposures} exposures, {archive.n_observations} observations,"
              f" generated in {gen:.2f}s", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
