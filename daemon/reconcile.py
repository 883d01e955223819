"""Reconcile: dispatched -> done | failed | new, from what the output store holds.

A catalog means done, whichever attempt of the dataset's current generation wrote it (the
key is deterministic and the content the same); a catalog of an earlier generation, still in
place while its input is re-catalogued, does not. A skip marker means skipped (terminal: the
input is not an imaging exposure mastmirror catalogues). An error marker counts only if it
was written by the dataset's latest dispatch (older markers are stale); one that says the
input is missing from the archive holds the dataset (a wait, not an attempt) until
``wait_hours`` have passed. A dataset with no result after ``executor.timeout_seconds`` is
dispatched again until ``executor.max_attempts``, then failed as timed out. Datasets
marked done are queued for the detection index, if there is one (daemon.indexing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from daemon.config import ArchiveSection, ExecutorSection
from daemon.executors import Executor
from daemon.indexing import Done, Indexer
from daemon.outputs import OutputStore, Pending
from state.store import DatasetRow, Failure, Finished, Skip, StateStore, Transition

log = structlog.get_logger("mastmirror.reconcile")


@dataclass
class ReconcileOutcome:
    """What one reconcile run settled."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    requeued: int = 0
    in_flight: int = 0


PAGE = 1000  # datasets in flight read, looked up and settled together
# Meta counters for the spend estimate (daemon.metrics): the run time of the catalogs made on
# Lambda (ms, as each catalog reports it), and the results the function wrote to S3.
LAMBDA_RUN_MS = "spend.lambda_run_ms"
OUTPUT_PUTS = "spend.output_puts"


def reconcile(store: StateStore, outputs: OutputStore, policy: ExecutorSection, *,
              archive: ArchiveSection | None = None, executor: Executor | None = None,
              now: float | None = None, index: Indexer | None = None,
              page: int = PAGE) -> ReconcileOutcome:
    """One pass over the datasets in flight (those done are queued for the index),
    ``page`` at a time (oldest dispatch first), so its memory stays the same with 1,000 or
    100,000 in flight.

    ``archive``: how long an input may be missing from the archive bucket (``wait_hours``
    after its release, or its discovery if later) and how soon it is looked for again
    (``recheck_seconds``); the defaults when None.
    """
    archive = archive or ArchiveSection()
    now = time.time() if now is None else now
    out = ReconcileOutcome()
    for rows in store.in_flight_pages(page):
        _settle(store, outputs, rows, policy=policy, archive=archive, now=now, out=out,
                index=index)
    if executor is not None:
        lost = [Failure(x.obs_id, x.dispatch, x.reason, True) for x in executor.drain_lost()]
        _count(store.fail_or_requeue(lost, max_attempts=policy.max_attempts,
                                     backoff_s=policy.retry_backoff_seconds, now=now), out)
    while expired := store.expire(timeout_s=policy.timeout_seconds,
                                  max_attempts=policy.max_attempts, now=now, limit=page):
        _count(expired, out)
    out.in_flight = store.count_in_flight()
    return out


def _settle(store: StateStore, outputs: OutputStore, rows: list[DatasetRow], *,
            policy: ExecutorSection, archive: ArchiveSection, now: float,
            out: ReconcileOutcome, index: Indexer | None) -> None:
    """What the output store says about one page of datasets in flight."""
    results = outputs.find_many([Pending(r.obs_id, r.input_key, r.min_dispatch) for r in rows])
    by_id = {r.obs_id: r for r in rows}

    finished = [Finished(obs_id=res.obs_id, catalog_key=res.key, sources=res.sources,
                         duration_ms=res.duration_ms, bytes_read=res.bytes_read,
                         peak_rss_mb=res.peak_rss_mb, attempt=res.attempt,
                         input_etag=res.input_etag, input_size=res.input_size)
                for res in results.values() if res.kind == "catalog"]
    run_ms = 0
    done = store.mark_done(finished, now=now)
    for obs_id in done:
        res = results[obs_id]
        log.info("done", obs_id=obs_id, sources=res.sources, duration_ms=res.duration_ms,
                 attempt=by_id[obs_id].dispatches, generation=by_id[obs_id].generation)
        out.done += 1
        if by_id[obs_id].executor == "lambda":
            run_ms += res.duration_ms or 0
    if index is not None:
        index.queue([Done(o, by_id[o].generation, results[o].key) for o in done])

    skips = [Skip(res.obs_id, by_id[res.obs_id].dispatches if res.attempt is None else res.attempt,
                  res.reason or "not catalogued")
             for res in results.values() if res.kind == "skipped"]
    _count(store.mark_skipped(skips, now=now), out)
    # Error markers count only when the dataset's latest dispatch wrote them.
    current = [res for res in results.values()
               if res.kind == "error" and res.attempt == by_id[res.obs_id].dispatches]
    missing = [Failure(res.obs_id, by_id[res.obs_id].dispatches, res.reason or "input missing",
                       True) for res in current if res.missing]
    _count(store.hold_missing(missing, wait_s=archive.wait_hours * 3600.0,
                              first_delay_s=archive.recheck_seconds,
                              max_delay_s=max(archive.recheck_seconds, 3600.0), now=now), out)
    failures = [Failure(res.obs_id, by_id[res.obs_id].dispatches, res.reason or "failed",
                        res.retryable) for res in current if not res.missing]
    _count(store.fail_or_requeue(failures, max_attempts=policy.max_attempts,
                                 backoff_s=policy.retry_backoff_seconds, now=now), out)
    # What the function's runs cost: Lambda time, and one PUT per result settled on S3.
    puts = len(done) + len(skips) + len(current) if outputs.url.startswith("s3://") else 0
    if run_ms or puts:
        store.set_meta({}, add={LAMBDA_RUN_MS: run_ms, OUTPUT_PUTS: puts})


def _count(settled: list[Transition], out: ReconcileOutcome) -> None:
    for t in settled:
        _log_transition(t)
        if t.state == "failed":
            out.failed += 1
        elif t.state == "skipped":
            out.skipped += 1
        else:
            out.requeued += 1


def _log_transition(t: Transition) -> None:
    if t.state == "failed":
        log.warning("failed", obs_id=t.obs_id, attempts=t.attempts, reason=t.reason)
    elif t.state == "skipped":
        log.info("skipped", obs_id=t.obs_id, reason=t.reason)
    else:
        log.info("will retry", obs_id=t.obs_id, attempts=t.attempts, reason=t.reason)
