"""Executors: who runs ``lambda_sep.handler.handler`` on an event.

``LocalExecutor`` runs it in a process pool on this machine with exactly the event a
Lambda would get; ``daemon.lambda_invoke.LambdaExecutor`` sends it to AWS Lambda. Both
satisfy ``Executor``. Neither decides a dataset's state: the reconciler reads the output
store. The local pool can add what the output store cannot say: that a worker process
died (killed, out of memory) or ran past its timeout, and so will never write anything.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from lambda_sep.contract import exposures

if TYPE_CHECKING:
    from pebble import ProcessPool

log = structlog.get_logger("mastmirror.executor")


@dataclass(frozen=True)
class Submitted:
    """The fate of one event handed to an executor."""

    obs_id: str
    dispatch: int
    request_id: str | None
    error: str | None = None  # set when the event never reached the function
    kind: str | None = None  # what kind of error, for the metrics (a Lambda error code...)


@dataclass(frozen=True)
class Lost:
    """An invocation that ended without a result in the output store (a dead worker)."""

    obs_id: str
    dispatch: int
    reason: str


def each_exposure(event: Mapping[str, Any], request_id: str | None, error: str | None = None,
                  kind: str | None = None) -> list[Submitted]:
    """One Submitted per exposure of ``event`` (several for a batch, lambda_sep.contract)."""
    return [Submitted(str(e["obs_id"]), int(e["attempt"]), request_id, error, kind)
            for e in exposures(dict(event))]


class Executor(Protocol):
    """What dispatch and the service need from an executor."""

    kind: str
    #: The most datasets worth having in flight, below ``[executor]``'s bound (None: no cap).
    in_flight_cap: int | None

    def submit(self, events: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        """Hand the events over; one Submitted per exposure, in order."""
        ...

    def drain_lost(self) -> list[Lost]:
        """Invocations known to have died without writing a result, since the last call."""
        ...

    def close(self, *, timeout_s: float = 30.0) -> list[Mapping[str, Any]]:
        """Stop; return the events that were accepted but never started."""
        ...


class LocalContext:
    """What the handler reads of Lambda's context object: the request id (for its log)."""

    def __init__(self, request_id: str) -> None:
        self.aws_request_id = request_id


def pool_worker_setup() -> None:
    """Call first in every pool worker: leave Ctrl-C to the parent, die with the parent.

    A terminal's Ctrl-C reaches the whole process group; a worker that dies of it breaks the
    pool under its parent, which is the one that decides what to stop (as systemd's
    KillMode=mixed does for SIGTERM). And a killed parent (kill -9, OOM) cannot tell its
    pool to stop, while a worker blocked reading the pool's task pipe may never see
    end-of-file (its siblings hold the write end too), so orphans would live forever; the
    parent's sentinel (a pipe multiprocessing opens at spawn) reports its death even if it
    happened before this worker got here.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _worker_init(env: Mapping[str, str]) -> None:
    pool_worker_setup()
    os.environ.update(env)
    # The handler logs one JSON line per run to stdout (CloudWatch under Lambda); here that
    # is the daemon's log stream, stderr, not the command's output.
    os.dup2(2, 1)
    # Import the function once per worker, as a warm Lambda container would have it.
    import lambda_sep.handler  # noqa: F401


def _run(event: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    from lambda_sep.handler import handler

    return handler(dict(event), LocalContext(request_id))


Target = Callable[[Mapping[str, Any], str], dict[str, Any]]


class LocalExecutor:
    """A pool of ``concurrency`` worker processes running the handler.

    Like Lambda, a run gets ``timeout_s`` from the moment it starts: past that its worker is
    stopped and replaced, and the run reported lost ("timed out"), so a stuck image cannot
    hold a slot until the daemon restarts. A worker that dies (killed, out of memory) costs
    only its own run; the other workers go on. pebble's pool does both, which the standard
    library's cannot (one dead worker breaks a ProcessPoolExecutor and every run in it).
    """

    kind = "local"
    in_flight_cap: int | None = None  # the pool queues: [executor]'s bound is the bound

    def __init__(self, concurrency: int, *, env: Mapping[str, str], timeout_s: float,
                 on_result: Callable[[dict[str, Any]], None] | None = None,
                 target: Target = _run) -> None:
        """``target`` is what a worker runs for an event: the handler, unless a test or a
        benchmark needs a run that hangs or dies on purpose (a module-level function)."""
        self.concurrency = concurrency
        self._env = dict(env)
        self._timeout_s = timeout_s
        self._on_result = on_result
        self._target = target
        self._lock = threading.Lock()
        self._lost: list[Lost] = []
        self._pending: dict[cf.Future[dict[str, Any]], Mapping[str, Any]] = {}
        self._closing = False
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPool:
        # Imported here: the Lambda executor's sender processes import this module, and
        # stay smaller without pebble.
        from pebble import ProcessPool

        # spawn: the daemon runs scheduler threads, and forking a threaded process is unsafe.
        return ProcessPool(max_workers=self.concurrency,
                           context=multiprocessing.get_context("spawn"),
                           initializer=_worker_init, initargs=(self._env,))

    def submit(self, events: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        """Queue events on the pool; request ids are generated here, as Lambda would."""
        out = []
        for event in events:
            request_id = str(uuid.uuid4())
            broken: ProcessPool | None = None
            with self._lock:
                try:
                    fut = self._pool.schedule(self._target, args=(event, request_id),
                                              timeout=self._timeout_s)
                except RuntimeError as exc:
                    # The pool is broken: pebble gives up when a worker dies while none has a
                    # run, or when it cannot start one. Replace it, and stop the old one's
                    # surviving workers (outside the lock: stopping it runs callbacks).
                    broken, self._pool = self._pool, self._new_pool()
                    error = f"local pool unavailable: {exc}"
                else:
                    self._pending[fut] = event
            if broken is not None:
                broken.stop()
                broken.join()
                out.extend(each_exposure(event, None, error, "pool"))
                continue
            fut.add_done_callback(self._done)
            out.extend(each_exposure(event, request_id))
        return out

    def _done(self, fut: cf.Future[dict[str, Any]]) -> None:
        with self._lock:
            event = self._pending.pop(fut, None)
        if event is None or fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            if self._on_result:
                self._on_result(fut.result())
            return
        if self._closing:
            return  # abandoned at shutdown: left dispatched for the next daemon to requeue
        reason = self._lost_reason(exc)
        # A batch's exposures that finished before the worker died have their results in
        # the output store: the reconciler finds those first, and ignores these for them.
        lost = [Lost(s.obs_id, s.dispatch, reason) for s in each_exposure(event, None)]
        for item in lost:
            log.error("invocation lost", obs_id=item.obs_id, attempt=item.dispatch,
                      reason=reason)
        with self._lock:
            self._lost.extend(lost)

    def _lost_reason(self, exc: BaseException) -> str:
        # The handler catches its own errors, so an exception here is about the worker.
        if isinstance(exc, TimeoutError):
            return f"timed out: still running after {self._timeout_s:g} s; worker stopped"
        from pebble import ProcessExpired

        if isinstance(exc, ProcessExpired):
            code = exc.exitcode
            how = (f"killed by {signal.Signals(-code).name}" if code < 0 and
                   -code in signal.valid_signals() else f"exit code {code}")
            return f"local worker died: {how}"
        return f"local worker failed: {type(exc).__name__}: {exc}"

    def drain_lost(self) -> list[Lost]:
        """Invocations whose worker died or ran past the timeout, since the last call."""
        with self._lock:
            lost, self._lost = self._lost, []
        return lost

    def close(self, *, timeout_s: float = 30.0) -> list[Mapping[str, Any]]:
        """Cancel what has not started, give running work ``timeout_s`` to finish, then stop.

        Work still running after the bound is abandoned (its workers are stopped); its
        datasets stay dispatched and the next daemon requeues them.
        """
        with self._lock:
            pool = self._pool
            pending = dict(self._pending)
        # A pebble future cancelled while running stops its worker; only cancel queued ones.
        never_started = [ev for fut, ev in pending.items() if not fut.running() and fut.cancel()]
        running = [fut for fut in pending if not fut.cancelled()]
        _, still = cf.wait(running, timeout=timeout_s)
        if still:
            log.warning("abandoning local runs at shutdown", running=len(still),
                        obs_ids=[pending[f]["obs_id"] for f in still])
            self._closing = True
            pool.stop()
        else:
            pool.close()
        pool.join()
        return never_started
