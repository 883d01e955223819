"""A stand-in for the AWS Lambda Invoke API on 127.0.0.1 that really runs the handler.

It serves ``POST /2015-03-31/functions/{name}/invocations`` for one function, as boto3's
Lambda client calls it (point the client at ``.url`` with ``endpoint_url`` or
``AWS_ENDPOINT_URL_LAMBDA``):

* ``X-Amz-Invocation-Type: Event``: 202 with ``x-amzn-RequestId`` and an empty body; the
  event joins a queue and runs later on a process pool of ``workers`` processes, as Lambda
  queues asynchronous events and runs them within the function's concurrency.
* ``RequestResponse`` (the default): runs the event and answers 200 with the handler's JSON
  (``X-Amz-Function-Error: Unhandled`` and Lambda's error document if it raised).
* ``DryRun``: 204.

The workers run ``lambda_sep.handler.handler`` with ``MASTMIRROR_ALLOWED_BUCKETS`` and
``MASTMIRROR_ALLOWED_OUTPUTS`` set as ``lambda deploy`` sets them on the real function.

Faults a test can arm (``arm``), each for a number of requests (or for ever) and optionally
only for one obs_id: ``throttle`` (429 ``TooManyRequestsException`` with Lambda's headers
and body), ``500``/``502``/``503``, ``drop`` (the connection closes before the event is
accepted), ``drop-accepted`` (the event is accepted, then the connection closes before the
answer: the client retries and the event arrives twice) and ``lose`` (202 and a request id,
but the event never runs: the reconciler's timeout path).

It also answers what the daemon and ``lambda deploy`` ask about concurrency, in Lambda's
shapes: ``GET /2016-08-19/account-settings`` (GetAccountSettings: ``AccountLimit`` with
``ConcurrentExecutions`` = ``account_limit`` and ``UnreservedConcurrentExecutions`` = that
less the function's reservation, and ``AccountUsage``) and ``GET /2019-09-30/functions/
{name}/concurrency`` (GetFunctionConcurrency: ``{"ReservedConcurrentExecutions": n}``, or
``{}`` without a reservation). moto (5.x) has no GetAccountSettings; with ``upstream`` set
(a moto server) every other request goes on to it, so ``lambda deploy`` can create the
function there and still read the account's limits here.

``run=False`` (``--no-run``) only accepts events, for the dispatch throughput benchmark.
Counters (``stats()``, or ``GET /_standin/stats`` from another process) tell what was
received, accepted, run, per obs_id. Faults can also be armed with ``POST /_standin/faults``.

``python -m standin.awslambda --port 0 [--no-run]`` prints its URL first, then serves
until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import http.client
import importlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from daemon.executors import LocalContext, pool_worker_setup
from lambda_sep.contract import (
    DEFAULT_ALLOWED_BUCKETS,
    ENV_ALLOWED_BUCKETS,
    ENV_ALLOWED_OUTPUTS,
    BatchError,
    exposures,
    function_env,
)
from standin.loopback import LoopbackHTTPServer

FAULTS = ("throttle", "500", "502", "503", "drop", "drop-accepted", "lose")
INVOKE_PREFIX = "/2015-03-31/functions/"
ACCOUNT_SETTINGS = "/2016-08-19/account-settings"
CONCURRENCY_PREFIX = "/2019-09-30/functions/"
# Lambda's documented code-storage quotas (GetAccountSettings' other AccountLimit fields).
_CODE_LIMITS = {"TotalCodeSize": 80530636800, "CodeSizeUnzipped": 262144000,
                "CodeSizeZipped": 52428800}
# Lambda's limit on an asynchronous event (256 KB), and on a synchronous one (6 MB).
EVENT_LIMIT = 256 * 1024
SYNC_LIMIT = 6 * 1024 * 1024
ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class _Fault:
    kind: str
    remaining: int | None  # None: every matching request
    obs_id: str | None


HANDLER = "lambda_sep.handler:handler"


def _obs_ids(event: Any) -> list[str]:
    """The obs_ids an event names (each exposure of a batch), for the counters."""
    try:
        items = exposures(event)
    except BatchError:
        return []
    return [e["obs_id"] for e in items if isinstance(e, dict) and isinstance(e.get("obs_id"), str)]


def _load(handler: str) -> Any:
    module, _, name = handler.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_init(env: Mapping[str, str], handler: str) -> None:
    pool_worker_setup()
    os.environ.update(env)
    # Import at start, as a warm Lambda container has the module loaded.
    _load(handler)


def _run(handler: str, event: dict[str, Any], request_id: str) -> Any:
    return _load(handler)(event, LocalContext(request_id))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Lambda's endpoint and botocore use
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the counters say what happened."""

    # -- plumbing ----------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None,
              request_id: str | None = None) -> None:
        self.send_response(status)
        self.send_header("x-amzn-RequestId", request_id or str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _error(self, status: int, error_type: str, message: str,
               extra: Mapping[str, Any] | None = None,
               headers: Mapping[str, str] | None = None) -> None:
        # Lambda's rest-json errors: the code in x-amzn-ErrorType, details in the body.
        doc = {"Type": "User" if status < 500 else "Service", "message": message,
               **(extra or {})}
        self._send(status, json.dumps(doc).encode(),
                   {"x-amzn-ErrorType": error_type, **(headers or {})})

    def _drop(self) -> None:
        # Close without a byte of answer: the client sees the connection reset.
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(2)

    # -- routes ------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _elsewhere(self, body: bytes) -> None:
        """A route this stand-in does not serve: the upstream's, or 404."""
        st = self.server.standin
        if st.upstream is None:
            self._error(404, "ResourceNotFoundException", f"no route {self.path}")
            return
        status, headers, answer = st.forward(self.command, self.path, dict(self.headers), body)
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length", "date",
                                 "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        """``/_standin/stats`` (the counters, for a benchmark in another process),
        GetAccountSettings, GetFunctionConcurrency; anything else goes upstream."""
        st = self.server.standin
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/_standin/stats":
            self._send(200, json.dumps(st.stats()).encode())
        elif path == ACCOUNT_SETTINGS:
            self._send(200, json.dumps(st.account_settings()).encode())
        elif (path.startswith(CONCURRENCY_PREFIX) and path.endswith("/concurrency")
              and st.upstream is None):
            name = unquote(path[len(CONCURRENCY_PREFIX):-len("/concurrency")])
            if not st._matches(name):
                self._error(404, "ResourceNotFoundException", f"Function not found: {name}")
            else:
                reserved = st.reserved
                self._send(200, json.dumps({} if reserved is None else
                                           {"ReservedConcurrentExecutions": reserved}).encode())
        else:
            self._elsewhere(b"")

    def do_PUT(self) -> None:
        """Only upstream (deployment calls)."""
        self._elsewhere(self._body())

    def do_DELETE(self) -> None:
        """``/_standin/faults``: disarm every fault; anything else goes upstream."""
        if self.path == "/_standin/faults":
            self.server.standin.disarm()
            self._send(204)
        else:
            self._elsewhere(b"")

    def do_POST(self) -> None:
        """Invoke, or arm a fault (``/_standin/faults``); anything else goes upstream."""
        body = self._body()
        parts = urlsplit(self.path)
        if parts.path == "/_standin/faults":
            try:
                spec = json.loads(body)
                self.server.standin.arm(spec["kind"], times=spec.get("times", 1),
                                        obs_id=spec.get("obs_id"))
            except (ValueError, KeyError, TypeError) as exc:
                self._error(400, "InvalidRequestContentException", str(exc))
                return
            self._send(204)
            return
        if not (parts.path.startswith(INVOKE_PREFIX) and parts.path.endswith("/invocations")):
            if self.server.standin.upstream is None:
                self._error(404, "UnknownOperationException", f"no route {parts.path}")
            else:
                self._elsewhere(body)
            return
        name = unquote(parts.path[len(INVOKE_PREFIX):-len("/invocations")])
        qualifier = parse_qs(parts.query).get("Qualifier", [None])[0]
        self.server.standin.handle_invoke(self, name, qualifier, body)


class _Server(LoopbackHTTPServer):
    # Many sending threads open their connections at once.
    request_queue_size = 256
    standin: LambdaStandIn


class LambdaStandIn:
    """One function's Invoke API on 127.0.0.1, running the real handler (or not)."""

    def __init__(self, function_name: str = "mastmirror-sep", *, workers: int = 2,
                 env: Mapping[str, str] | None = None, run: bool = True, port: int = 0,
                 timeout_s: float = 60.0, handler: str = HANDLER, account_limit: int = 1000,
                 reserved: int | None = None, upstream: str | None = None) -> None:
        """``handler`` is ``module:function`` (the real one unless a test needs another).
        ``account_limit``: the account's concurrent executions (1,000 is AWS's documented
        default; new accounts get less); ``reserved``: the function's reserved concurrency;
        ``upstream``: a server (moto) for every request this one does not answer."""
        self.function_name = function_name
        self.account_limit = account_limit
        self.reserved = reserved
        self.upstream = upstream
        self.handler = handler
        self.workers = workers
        self.env = dict(env or {})
        self.run = run
        self.timeout_s = timeout_s
        self._port = port
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._counts: Counter[str] = Counter()
        self._accepted: Counter[str] = Counter()
        self._runs: Counter[str] = Counter()
        self._results: dict[str, list[dict[str, Any]]] = {}
        self._pending: set[cf.Future[dict[str, Any]]] = set()
        self._max_queued = 0
        self._idle = threading.Condition(self._lock)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._pool: cf.ProcessPoolExecutor | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the stand-in is not started")
        return self._server.url

    def start(self) -> LambdaStandIn:
        """Bind 127.0.0.1, start the workers (unless ``run=False``) and serve."""
        if self.run:
            # spawn: the server is threaded, and forking a threaded process is unsafe.
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(self.env, self.handler))
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.standin = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="lambda-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; queued events that have not started are dropped, as on shutdown."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LambdaStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- concurrency, and the upstream ----------------------------------------------------

    def account_settings(self) -> dict[str, Any]:
        """GetAccountSettings' answer: the account's limit, less the function's reservation."""
        reserved = self.reserved
        if self.upstream is not None:
            status, _, body = self.forward(
                "GET", f"{CONCURRENCY_PREFIX}{self.function_name}/concurrency", {}, b"")
            reserved = json.loads(body).get("ReservedConcurrentExecutions") \
                if status == 200 else None
        return {"AccountLimit": {**_CODE_LIMITS, "ConcurrentExecutions": self.account_limit,
                                 "UnreservedConcurrentExecutions":
                                     self.account_limit - (reserved or 0)},
                "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": 1}}

    def forward(self, method: str, path: str, headers: Mapping[str, str], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request on to ``upstream``; its status, headers and body."""
        assert self.upstream is not None
        parts = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                          timeout=60)
        try:
            sent = {k: v for k, v in headers.items()
                    if k.lower() not in ("connection", "content-length")}
            conn.request(method, path, body=body or None,
                         headers={**sent, "Content-Length": str(len(body))})
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    # -- faults and counters -------------------------------------------------------------

    def arm(self, kind: str, *, times: int | None = 1, obs_id: str | None = None) -> None:
        """Answer the next ``times`` invocations (all if None; only ``obs_id``'s if given)
        with the fault ``kind`` (one of FAULTS). Faults apply in the order armed."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every request)")
        with self._lock:
            self._faults.append(_Fault(kind, times, obs_id))

    def disarm(self) -> None:
        """Remove every armed fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, obs_ids: list[str]) -> str | None:
        with self._lock:
            for f in self._faults:
                if f.obs_id is not None and f.obs_id not in obs_ids:
                    continue
                if f.remaining is not None:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._faults.remove(f)
                return f.kind
        return None

    def stats(self) -> dict[str, Any]:
        """Counters: ``received`` (every invoke request), ``accepted`` (events queued or
        run), ``run`` (handler calls finished), ``errors`` (handler raised), ``lost``
        (accepted, never run), ``faults`` by kind, ``queued`` (accepted, not finished) and
        ``max_queued`` (the most that ever were), and per obs_id how often it was
        ``accepted_by_obs`` and ``run_by_obs``."""
        with self._lock:
            c = dict(self._counts)
            return {
                "received": c.get("received", 0), "accepted": c.get("accepted", 0),
                "run": c.get("run", 0), "errors": c.get("errors", 0), "lost": c.get("lost", 0),
                "queued": len(self._pending), "max_queued": self._max_queued,
                "faults": {k.removeprefix("fault:"): v for k, v in c.items()
                           if k.startswith("fault:")},
                "accepted_by_obs": dict(self._accepted), "run_by_obs": dict(self._runs),
            }

    def results(self, obs_id: str) -> list[dict[str, Any]]:
        """The handler's summaries for ``obs_id``, one per run."""
        with self._lock:
            return list(self._results.get(obs_id, []))

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Wait until every accepted event has run; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # -- invocations ---------------------------------------------------------------------

    def _matches(self, name: str) -> bool:
        if name == self.function_name:
            return True
        # An ARN (arn:aws:lambda:region:account:function:NAME[:qualifier]) or a partial one.
        parts = name.split(":")
        return "function" in parts and parts[parts.index("function") + 1:][:1] == [
            self.function_name]

    def handle_invoke(self, req: _Handler, name: str, qualifier: str | None,
                      body: bytes) -> None:
        """Answer one Invoke request."""
        with self._lock:
            self._counts["received"] += 1
        if not req.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256"):
            req._error(403, "MissingAuthenticationTokenException",
                       "Missing Authentication Token")
            return
        if not self._matches(name) or qualifier not in (None, "$LATEST"):
            fn = f"{name}:{qualifier}" if qualifier else name
            req._error(404, "ResourceNotFoundException",
                       f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT}:function:{fn}")
            return
        kind = req.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind not in ("Event", "RequestResponse", "DryRun"):
            req._error(400, "InvalidParameterValueException",
                       f"1 validation error detected: Value '{kind}' at 'invocationType' "
                       "failed to satisfy constraint: Member must satisfy enum value set: "
                       "[Event, RequestResponse, DryRun]")
            return
        limit = EVENT_LIMIT if kind == "Event" else SYNC_LIMIT
        if len(body) > limit:
            req._error(413, "RequestTooLargeException",
                       f"Request must be smaller than {limit} bytes for the {kind} "
                       "invocation type")
            return
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            req._error(400, "InvalidRequestContentException",
                       "Could not parse request body into json: Unexpected character")
            return
        obs_ids = _obs_ids(event)
        fault = self._take_fault(obs_ids)
        if fault is not None and self._inject(req, fault):
            return
        if kind == "DryRun":
            req._send(204)
            return
        request_id = str(uuid.uuid4())
        lost = fault == "lose"
        with self._lock:
            self._counts["accepted"] += 1
            self._accepted.update(obs_ids)
            if lost:
                self._counts["lost"] += 1
        fut = None if lost else self._start(event, request_id, obs_ids)
        if fault == "drop-accepted":
            req._drop()
            return
        if kind == "Event":
            req._send(202, request_id=request_id)
            return
        self._answer_sync(req, fut, request_id)

    def _inject(self, req: _Handler, fault: str) -> bool:
        """Answer with ``fault`` before the event is accepted; False for after-accept kinds."""
        with self._lock:
            self._counts[f"fault:{fault}"] += 1
        if fault == "throttle":
            req._error(429, "TooManyRequestsException", "Rate exceeded",
                       {"Reason": "CallerRateLimitExceeded"}, {"Retry-After": "1"})
        elif fault == "500":
            req._error(500, "ServiceException", "An internal error occurred.")
        elif fault in ("502", "503"):
            # What a load balancer in front of the service answers: no JSON error document.
            req.send_response(int(fault))
            req.send_header("Content-Length", "0")
            req.end_headers()
        elif fault == "drop":
            req._drop()
        else:
            return False
        return True

    def _start(self, event: dict[str, Any], request_id: str,
               obs_ids: list[str]) -> cf.Future[dict[str, Any]] | None:
        if self._pool is None:
            return None  # --no-run: accepted and counted, nothing runs
        fut = self._pool.submit(_run, self.handler, event, request_id)
        with self._lock:
            self._pending.add(fut)
            self._max_queued = max(self._max_queued, len(self._pending))

        def done(f: cf.Future[dict[str, Any]]) -> None:
            with self._idle:
                self._pending.discard(f)
                if f.cancelled():
                    pass
                elif f.exception() is not None:
                    self._counts["errors"] += 1
                else:
                    self._counts["run"] += 1
                    result = f.result()
                    # A batch answers with one summary per exposure, in its order.
                    per = result.get("results", [result]) if isinstance(result, dict) else []
                    for obs_id, summary in zip(obs_ids, per, strict=False):
                        self._runs[obs_id] += 1
                        self._results.setdefault(obs_id, []).append(summary)
                self._idle.notify_all()

        fut.add_done_callback(done)
        return fut

    def _answer_sync(self, req: _Handler, fut: cf.Future[dict[str, Any]] | None,
                     request_id: str) -> None:
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if fut is None:  # lost or --no-run: what a function returning None answers
            req._send(200, b"null", headers, request_id)
            return
        try:
            result = fut.result(timeout=self.timeout_s)
        except cf.TimeoutError:
            error: dict[str, Any] = {
                "errorMessage": f"Task timed out after {self.timeout_s:.2f} seconds"}
        except Exception as exc:
            error = {"errorMessage": str(exc), "errorType": type(exc).__name__,
                     "stackTrace": traceback.format_exception_only(exc)}
        else:
            req._send(200, json.dumps(result).encode(), headers, request_id)
            return
        req._send(200, json.dumps(error).encode(),
                  {**headers, "X-Amz-Function-Error": "Unhandled"}, request_id)


@contextlib.contextmanager
def running(function_name: str = "mastmirror-sep", **kwargs: Any) -> Iterator[LambdaStandIn]:
    """``with running(...) as standin:`` start, yield, stop."""
    standin = LambdaStandIn(function_name, **kwargs).start()
    try:
        yield standin
    finally:
        standin.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; the first line printed is the URL."""
    parser = argparse.ArgumentParser(prog="python -m standin.awslambda",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--function", default="mastmirror-sep")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-run", action="store_true",
                        help="accept invocations without running them (benchmarks)")
    parser.add_argument("--allowed-buckets", default=os.environ.get(
        ENV_ALLOWED_BUCKETS, DEFAULT_ALLOWED_BUCKETS))
    parser.add_argument("--allowed-outputs", default=os.environ.get(ENV_ALLOWED_OUTPUTS, ""))
    parser.add_argument("--account-limit", type=int, default=1000,
                        help="the account's concurrent executions GetAccountSettings reports")
    args = parser.parse_args(argv)
    env = function_env(args.allowed_buckets, args.allowed_outputs)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with running(args.function, workers=args.workers, env=env, run=not args.no_run,
                 port=args.port, account_limit=args.account_limit) as standin:
        print(standin.url, flush=True)
        stop.wait()
    totals = {k: v for k, v in standin.stats().items() if not k.endswith("_by_obs")}
    print(json.dumps(totals), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
