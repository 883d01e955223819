"""The operator's metrics: a Prometheus text endpoint (``[metrics] listen``), via
prometheus_client.

What a scrape answers (names ``mastmirror_*``):

* from the state database, read at scrape time: ``datasets{state}`` (new, waiting, dispatched,
  done, failed, skipped), ``in_flight`` and ``oldest_in_flight_age_seconds``,
  ``last_poll_age_seconds``, ``last_poll_ok``, ``last_poll_new``, and
  ``estimated_spend_usd{service}``: Lambda (the run time the catalogs report x the configured
  memory x the GB-second price, plus the request charge of every invocation sent) and S3
  (one PUT per result the function wrote), priced by ``daemon.prices``. Lambda's
  initialisation of new containers and runs that left no catalog are not in it;
* counters of this daemon process since it started (Prometheus' ``rate()`` turns them into
  rates): ``dispatched_datasets_total``, ``invocations_total``,
  ``reconciled_total{outcome}``, ``reconcile_passes_total``, ``polls_total{ok}`` (resweeps
  included), and ``errors_total{system, kind}``: MAST polls and resweeps that failed
  (timeout, connection, http, answer, other), S3 request attempts that failed (by error
  code: botocore retries most of them), reconcile passes the output store stopped
  (retryable, refused) and archive inputs the refresh walk could not check
  (refresh_unchecked), and datasets whose invocation Lambda refused after botocore's
  retries (by error code).

The endpoint is off unless ``listen`` names an address; the counters are kept either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon import prices
from daemon.dispatch import LAMBDA_REQUESTS
from daemon.reconcile import LAMBDA_RUN_MS, OUTPUT_PUTS

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from daemon.config import Config
    from daemon.discovery import PollOutcome
    from daemon.dispatch import DispatchOutcome
    from daemon.reconcile import ReconcileOutcome
    from daemon.refresh import RefreshOutcome
    from state.store import StateStore

__all__ = ["Metrics", "mast_error_kind"]

_NS = "mastmirror"


def mast_error_kind(message: str) -> str:
    """The kind of a failed poll, from ``daemon.mast.MastError``'s wording."""
    text = message.lower()
    if "timed out" in text:
        return "timeout"
    if "could not connect" in text:
        return "connection"
    if "http " in text:
        return "http"
    if "answer" in text:
        return "answer"  # not JSON, incomplete, a status other than COMPLETE
    return "other"


class _StateCollector(Collector):
    """Gauges read from the state database when Prometheus scrapes."""

    def __init__(self, store: StateStore, config: Config) -> None:
        self.store = store
        self.config = config

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.store.snapshot(failures=0)
        now = snap.taken_at
        datasets = GaugeMetricFamily(f"{_NS}_datasets", "Datasets by state (waiting: new, "
                                     "held until the input reaches the archive bucket)",
                                     labels=["state"])
        for state, n in snap.counts.items():
            if state != "total":
                datasets.add_metric([state], n)
        datasets.add_metric(["waiting"], snap.waiting)
        yield datasets
        yield GaugeMetricFamily(f"{_NS}_in_flight", "Datasets dispatched and not yet settled",
                                value=snap.in_flight)
        oldest = now - snap.oldest_dispatched_at if snap.oldest_dispatched_at else 0.0
        yield GaugeMetricFamily(f"{_NS}_oldest_in_flight_age_seconds",
                                "Age of the oldest dispatch still in flight (0: none)",
                                value=oldest)
        poll = snap.last_poll or {}
        at = poll.get("finished_at") or poll.get("started_at")
        yield GaugeMetricFamily(f"{_NS}_last_poll_age_seconds",
                                "Seconds since the last poll ended (or started, if running)",
                                value=now - at if at else float("nan"))
        ok = poll.get("ok")
        yield GaugeMetricFamily(f"{_NS}_last_poll_ok", "1 if the last poll succeeded, 0 if it "
                                "failed, NaN while it runs or before the first",
                                value=float(ok) if ok is not None else float("nan"))
        yield GaugeMetricFamily(f"{_NS}_last_poll_new", "Datasets the last poll discovered",
                                value=poll.get("new") or 0)
        yield self._spend()

    def _spend(self) -> GaugeMetricFamily:
        meta = {k: float(self.store.meta(k) or 0) for k in (LAMBDA_RUN_MS, LAMBDA_REQUESTS,
                                                             OUTPUT_PUTS)}
        lam = self.config.lambda_
        spend = GaugeMetricFamily(f"{_NS}_estimated_spend_usd", "Estimated AWS spend so far "
                                  "(daemon.prices): Lambda run time and requests, S3 PUTs",
                                  labels=["service"])
        spend.add_metric(["lambda"], prices.lambda_usd(
            meta[LAMBDA_RUN_MS] / 1000.0, int(meta[LAMBDA_REQUESTS]),
            memory_mb=lam.memory_mb, architecture=lam.architecture))
        spend.add_metric(["s3"], meta[OUTPUT_PUTS] * prices.S3_PUT)
        return spend


class Metrics:
    """The daemon's counters, and the endpoint that serves them with the state's gauges."""

    def __init__(self, store: StateStore, config: Config) -> None:
        self.registry = CollectorRegistry()
        state = _StateCollector(store, config)
        self.registry.register(state)
        self.dispatched = Counter(f"{_NS}_dispatched_datasets", "Datasets sent to the "
                                  "function", registry=self.registry)
        self.invocations = Counter(f"{_NS}_invocations", "Events (invocations) sent",
                                   registry=self.registry)
        self.reconciled = Counter(f"{_NS}_reconciled", "Dispatches settled by reconcile",
                                  ["outcome"], registry=self.registry)
        self.passes = Counter(f"{_NS}_reconcile_passes", "Reconcile passes completed",
                              registry=self.registry)
        self.polls = Counter(f"{_NS}_polls", "MAST polls (resweeps included)", ["ok"],
                             registry=self.registry)
        self.errors = Counter(f"{_NS}_errors", "Errors of the external systems, by kind",
                              ["system", "kind"], registry=self.registry)
        self._server: WSGIServer | None = None
        self._hooks: list[tuple[Any, Any]] = []
        self._state = state

    # -- what the jobs report ------------------------------------------------------------

    def polled(self, outcome: PollOutcome) -> None:
        """A poll ended."""
        self.polls.labels(ok=str(outcome.ok).lower()).inc()
        if not outcome.ok:
            self.errors.labels("mast", mast_error_kind(outcome.error or "")).inc()

    def dispatched_run(self, outcome: DispatchOutcome) -> None:
        """A dispatch run ended."""
        self.dispatched.inc(outcome.sent)
        self.invocations.inc(outcome.invocations)
        for kind, n in outcome.refused.items():
            self.errors.labels("lambda" if kind != "pool" else "local", kind).inc(n)

    def reconciled_run(self, outcome: ReconcileOutcome) -> None:
        """A reconcile pass ended."""
        self.passes.inc()
        for name in ("done", "failed", "skipped", "requeued"):
            self.reconciled.labels(outcome=name).inc(getattr(outcome, name))

    def refreshed(self, outcome: RefreshOutcome) -> None:
        """A refresh batch ended: each input whose HEAD (and LIST) gave no answer is an S3
        error of the archive's (the error is in the outcome's reasons and the log)."""
        if outcome.unknown:
            self.errors.labels("s3", "refresh_unchecked").inc(len(outcome.unknown))

    def error(self, system: str, kind: str) -> None:
        """One error of ``system`` ("mast", "s3", "lambda")."""
        self.errors.labels(system, kind).inc()

    def s3_retries(self, client: Any) -> None:
        """Count the failed request attempts of an S3 client, by error code (botocore's
        retry decision follows, unchanged)."""

        def needs_retry(response: Any = None, caught_exception: Any = None,
                        **_: Any) -> None:
            if caught_exception is not None:
                self.error("s3", type(caught_exception).__name__)
            elif response is not None:
                status = getattr(response[0], "status_code", 0)
                if status >= 500 or status == 429:
                    code = (response[1] or {}).get("Error", {}).get("Code") or f"HTTP {status}"
                    self.error("s3", str(code))
            # None: botocore's own retry handler decides.

        client.meta.events.register("needs-retry.s3", needs_retry)
        self._hooks.append((client, needs_retry))

    # -- the endpoint --------------------------------------------------------------------

    def serve(self, listen: str) -> str:
        """Serve ``/metrics`` on ``host:port`` (a daemon thread); return the address."""
        host, _, port = listen.rpartition(":")
        self._server, _thread = start_http_server(int(port), host.strip("[]"),
                                                  registry=self.registry)
        bound_host, bound_port = self._server.server_address[:2]
        if isinstance(bound_host, bytes):
            bound_host = bound_host.decode()
        return f"{bound_host}:{bound_port}"

    def configure(self, config: Config) -> None:
        """Price the spend with a reloaded configuration's [lambda] memory and architecture."""
        self._state.config = config

    def close(self) -> None:
        """Stop serving (scrapes in progress finish on their own threads) and counting."""
        for client, hook in self._hooks:
            client.meta.events.unregister("needs-retry.s3", hook)
        self._hooks.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
