"""The ``lambda`` executor: the ONLY daemon module that invokes AWS Lambda.

Each event goes out as an asynchronous invocation (``InvocationType="Event"``): Lambda
answers 202 with a request id once it has queued the event, and runs it later. Nothing about
the run comes back here; the reconciler learns the outcome from the output store.

Sending is concurrent on a bounded thread pool sharing one boto3 client (boto3 clients are
thread-safe; its connection pool is sized to the threads, so every thread keeps a warm
HTTP keep-alive connection). Throttling (429 ``TooManyRequestsException``), 5xx answers and
dropped connections are retried by botocore's own retry modes (``standard``: exponential
backoff with jitter and a retry quota; ``adaptive``: the same plus a client-side rate limiter
that slows the sending rate to what Lambda accepts), not by a loop here. An event still not
accepted after those retries comes back as ``Submitted(error=...)``, and dispatch puts the
dataset back to ``new`` without counting an attempt.

A botocore call costs about 0.7-1 ms of CPU (signing, serialisation, header handling, the
event hooks), all under one GIL, so one process tops out near 1,000 invocations/s however
many threads it has. With ``processes > 1`` the events of a batch are split across that many
sender processes, each with its own client and threads (see docs/BENCHMARKS.md).

Delivery is at least once: a connection that drops after Lambda queued the event makes
botocore send it again. The output key is deterministic, so a second run rewrites the same
catalog: exactly once in effect.

Endpoint and credentials come only from the standard AWS configuration (environment,
profile, role; ``AWS_ENDPOINT_URL_LAMBDA`` or ``AWS_ENDPOINT_URL`` for a local endpoint).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import math
import multiprocessing
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Literal

import boto3
import botocore.config
import botocore.exceptions
import structlog

from daemon.executors import Lost, Submitted, each_exposure, pool_worker_setup

if TYPE_CHECKING:
    from daemon.config import Config

log = structlog.get_logger("mastmirror.lambda")

RetryMode = Literal["standard", "adaptive"]


def lambda_client(*, threads: int, retry_mode: RetryMode = "standard", max_attempts: int = 6,
                  connect_timeout_s: float = 5.0, read_timeout_s: float = 30.0) -> Any:
    """A Lambda client for ``threads`` concurrent callers, retrying with botocore's modes.

    ``max_attempts`` counts every attempt, the first included (botocore's
    ``total_max_attempts``; its ``max_attempts`` would count retries only).
    """
    config = botocore.config.Config(
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},
        # One pooled connection per sending thread: no thread waits for a socket and none
        # is opened and closed per call.
        max_pool_connections=threads,
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        tcp_keepalive=True,
        # The three parameters are always the same well-formed strings, and Lambda checks
        # them anyway: botocore's own check is a tenth of the call's CPU.
        parameter_validation=False,
    )
    # A Session of its own: the default session is not safe to create clients from
    # concurrently, and the daemon may rebuild its executor on SIGHUP.
    return boto3.session.Session().client("lambda", config=config)


@dataclasses.dataclass(frozen=True)
class Capacity:
    """How many runs of the function Lambda allows at once (GetAccountSettings'
    ``AccountLimit`` and GetFunctionConcurrency)."""

    account: int  # ConcurrentExecutions: the account's limit in this region
    unreserved: int  # UnreservedConcurrentExecutions: what functions without a reservation share
    reserved: int | None  # the function's reserved concurrency, if it has one

    @property
    def runnable(self) -> int:
        """At most this many runs at once: the reservation, else the unreserved pool (which
        every function without one shares)."""
        return self.reserved if self.reserved is not None else self.unreserved

    def describe(self) -> str:
        """Where ``runnable`` comes from, in words."""
        if self.reserved is not None:
            return f"its reserved concurrency is {self.reserved}"
        return (f"it has no reserved concurrency and the account's unreserved pool is "
                f"{self.unreserved} (account limit {self.account})")


def read_capacity(client: Any, function_name: str) -> Capacity:
    """The account's Lambda concurrency and the function's reservation, read from Lambda.

    New accounts get far less than the documented default of 1,000 (AWS raises it with use);
    a function without a reservation shares the unreserved pool with every other function.
    botocore errors propagate (the caller decides what a missing answer means).
    """
    limit = client.get_account_settings()["AccountLimit"]
    try:
        reserved = client.get_function_concurrency(FunctionName=function_name).get(
            "ReservedConcurrentExecutions")
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        reserved = None  # not deployed yet: it would draw from the unreserved pool
    return Capacity(int(limit["ConcurrentExecutions"]),
                    int(limit["UnreservedConcurrentExecutions"]),
                    None if reserved is None else int(reserved))


def capacity_warning(capacity: Capacity, wanted: int, function_name: str) -> str | None:
    """Why ``wanted`` runs at once ([executor] concurrency) cannot all run, or None."""
    if wanted <= capacity.runnable:
        return None
    return (f"Lambda runs at most {capacity.runnable} of {function_name} at once "
            f"({capacity.describe()}), fewer than [executor] concurrency = {wanted}: events "
            "beyond that wait in Lambda's queue and would age into timeouts; ask AWS for a "
            "higher limit (Service Quotas, 'Concurrent executions') or lower the concurrency")


def _not_sent(events: Sequence[Mapping[str, Any]], reason: str, kind: str) -> list[Submitted]:
    return [s for e in events for s in each_exposure(e, None, reason, kind)]


class _Sender:
    """One client and its thread pool, in whichever process sends."""

    def __init__(self, function_name: str, client: Any, threads: int) -> None:
        self.function_name = function_name
        self.client = client
        self._pool = cf.ThreadPoolExecutor(max_workers=threads,
                                           thread_name_prefix="lambda-invoke")

    def invoke(self, event: Mapping[str, Any]) -> list[Submitted]:
        """One Event invocation; a Submitted for each exposure it carries."""
        try:
            resp = self.client.invoke(FunctionName=self.function_name, InvocationType="Event",
                                      Payload=json.dumps(event, separators=(",", ":")))
            # An Event answer has an empty body, but it is a stream: reading it to the end
            # hands the keep-alive connection back to the pool (left unread, the connection
            # is discarded and every call pays a new TCP connect: half the throughput).
            resp["Payload"].read()
            resp["Payload"].close()
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            tries = int(meta.get("RetryAttempts", 0)) + 1
            return each_exposure(event, None,
                                 f"Lambda refused the invocation: {err.get('Code', '?')} (HTTP "
                                 f"{meta.get('HTTPStatusCode', '?')}): {err.get('Message', '')} "
                                 f"after {tries} attempt(s)", str(err.get("Code") or "refused"))
        except botocore.exceptions.BotoCoreError as exc:
            # Connection refused or dropped past every retry, timeouts, no credentials.
            return each_exposure(event, None, f"Lambda not reached: {type(exc).__name__}: {exc}",
                                 "unreachable")
        meta = resp.get("ResponseMetadata", {})
        status = int(resp.get("StatusCode") or meta.get("HTTPStatusCode") or 0)
        if not 200 <= status < 300:
            return each_exposure(event, None, f"Lambda answered HTTP {status}", f"HTTP {status}")
        return each_exposure(event, meta.get("RequestId") or None)

    def send(self, events: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        if len(events) == 1:
            return self.invoke(events[0])  # no hop through the pool for a single event
        try:
            return [s for answer in self._pool.map(self.invoke, events) for s in answer]
        except RuntimeError as exc:  # closed by a reload while these were being sent
            return _not_sent(events, f"the Lambda executor is closed: {exc}", "closed")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# The sender of a sender process (set by its initializer).
_process_sender: _Sender | None = None


def _init_sender_process(function_name: str, threads: int, retry_mode: RetryMode,
                         max_attempts: int) -> None:
    global _process_sender
    pool_worker_setup()
    client = lambda_client(threads=threads, retry_mode=retry_mode, max_attempts=max_attempts)
    _process_sender = _Sender(function_name, client, threads)


def _send_in_process(events: list[dict[str, Any]]) -> list[Submitted]:
    assert _process_sender is not None, "sender process not initialised"
    return _process_sender.send(events)


class LambdaExecutor:
    """Sends events to one Lambda function as asynchronous invocations."""

    kind = "lambda"
    #: At most this many datasets in flight (what Lambda can run at once), when known.
    in_flight_cap: int | None = None

    def __init__(self, function_name: str, *, concurrency: int = 32, processes: int = 1,
                 retry_mode: RetryMode = "standard", max_attempts: int = 6,
                 client: Any = None) -> None:
        """``concurrency``: Invoke calls in the air at once (sending threads, split evenly
        across ``processes``). It is not the function's concurrency: each call returns as
        soon as Lambda has queued the event. ``client`` (one process only) replaces the
        client built from the standard AWS configuration."""
        if concurrency < 1 or processes < 1:
            raise ValueError("concurrency and processes must be at least 1")
        if client is not None and processes > 1:
            raise ValueError("a given client cannot be shared with sender processes")
        self.function_name = function_name
        self.concurrency = concurrency
        self.processes = processes
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sender: _Sender | None = None
        self._procs: cf.ProcessPoolExecutor | None = None
        threads = math.ceil(concurrency / processes)
        self._init_args = (function_name, threads, retry_mode, max_attempts)
        if processes == 1:
            self._sender = _Sender(function_name, client or lambda_client(
                threads=threads, retry_mode=retry_mode, max_attempts=max_attempts), threads)
        else:
            self._procs = self._new_processes()

    def _new_processes(self) -> cf.ProcessPoolExecutor:
        # spawn: the daemon runs scheduler threads, and forking a threaded process is unsafe.
        return cf.ProcessPoolExecutor(max_workers=self.processes,
                                      mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_sender_process,
                                      initargs=self._init_args)

    @classmethod
    def from_config(cls, config: Config) -> LambdaExecutor:
        """The executor ``[executor]`` and ``[lambda]`` describe, its in-flight bound kept
        within what Lambda can run (``limit_in_flight``)."""
        lam = config.lambda_
        executor = cls(config.executor.function, concurrency=lam.invoke_threads,
                       processes=lam.invoke_processes, retry_mode=lam.invoke_retry_mode,
                       max_attempts=lam.invoke_max_attempts)
        executor.limit_in_flight(config.executor.in_flight_limit, batch=config.executor.batch)
        return executor

    def limit_in_flight(self, wanted: int, client: Any = None, *, batch: int = 1) -> int | None:
        """Read what Lambda can run of the function at once and cap the datasets in flight
        there (``in_flight_cap``: that many runs of ``batch`` datasets each), warning once
        when the runs ``wanted`` datasets take are more; the cap, or None when Lambda would
        not say (the configured bound stands, with a warning)."""
        name = self.function_name
        try:
            capacity = read_capacity(client or lambda_client(threads=1), name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError,
                KeyError, TypeError, ValueError) as exc:
            log.warning("Lambda concurrency unknown; keeping the configured in-flight bound",
                        function=name, bound=wanted, error=f"{type(exc).__name__}: {exc}")
            return None
        runs = math.ceil(wanted / batch)  # a batch event is one run
        warning = capacity_warning(capacity, runs, name)
        if warning is None:
            log.info("Lambda concurrency", function=name, runnable=capacity.runnable,
                     in_flight=wanted)
            return None
        # At least one in flight: a function Lambda runs none of is the warning's to say.
        self.in_flight_cap = max(1, capacity.runnable) * batch
        log.warning("in-flight bound lowered to what Lambda can run", function=name,
                    configured=wanted, bound=self.in_flight_cap, reason=warning)
        return self.in_flight_cap

    @property
    def client(self) -> Any:
        """The boto3 client (one-process executors only)."""
        if self._sender is None:
            raise AttributeError("a multi-process LambdaExecutor has a client per process")
        return self._sender.client

    def submit(self, events: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        """Invoke every event (concurrently); one Submitted per exposure, in order.

        Returns once every event is accepted or has failed past its retries.
        """
        if self._closed.is_set():
            return _not_sent(events, "the Lambda executor is closed", "closed")
        if not events:
            return []
        if self._sender is not None:
            results = self._sender.send(events)
        else:
            results = self._submit_to_processes(events)
        refused = [s for s in results if s.error is not None]
        if refused:
            log.warning("invocations not accepted", refused=len(refused), sent=len(events),
                        first_error=refused[0].error)
        return results

    def _submit_to_processes(self, events: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        # Contiguous, near-equal slices, one per process, so each process's threads and
        # connections stay busy and the order of the answers is the order of the events.
        n = min(self.processes, len(events))
        size = math.ceil(len(events) / n)
        chunks = [[dict(e) for e in events[i:i + size]] for i in range(0, len(events), size)]
        with self._lock:
            pool = self._procs
            if pool is None:
                return _not_sent(events, "the Lambda executor is closed", "closed")
            try:
                futures = [pool.submit(_send_in_process, chunk) for chunk in chunks]
            except (BrokenProcessPool, RuntimeError) as exc:
                self._procs = self._new_processes()
                return _not_sent(events, f"Lambda sender processes unavailable: {exc}", "sender")
        results: list[Submitted] = []
        for chunk, fut in zip(chunks, futures, strict=True):
            try:
                results.extend(fut.result())
            except BrokenProcessPool as exc:
                # A sender died (killed, out of memory). Some of its events may have gone
                # out: sending them again later is safe (at least once, same output key).
                results.extend(_not_sent(chunk, f"a Lambda sender process died: {exc}",
                                         "sender"))
                with self._lock:
                    if self._procs is pool and not self._closed.is_set():
                        self._procs = self._new_processes()
        return results

    def drain_lost(self) -> list[Lost]:
        """Always empty: whether a Lambda run happened is known only from the output store."""
        return []

    def close(self, *, timeout_s: float = 30.0) -> list[Mapping[str, Any]]:
        """Stop sending (a batch in progress finishes first). Nothing is held back: every
        accepted event is in Lambda's queue already, so there is never anything to return."""
        self._closed.set()
        if self._sender is not None:
            self._sender.close()
        with self._lock:
            pool, self._procs = self._procs, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        return []
