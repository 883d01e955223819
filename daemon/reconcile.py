"""Reconcile: dispatched -> done | failed | new, from what the output store holds.

A catalog means done, whichever attempt wrote it (the key is deterministic and the content
the same). An error marker counts only if it was written by the dataset's latest dispatch
(older markers are stale). A dataset with no result after ``executor.timeout_seconds`` is
dispatched again until ``executor.max_attempts``, then failed as timed out. Datasets
marked done are queued for the detection index, if there is one (daemon.indexing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from daemon.config import ExecutorSection
from daemon.executors import Executor
from daemon.indexing import Done, Indexer
from daemon.outputs import OutputStore
from state.store import Finished, StateStore, Transition

log = structlog.get_logger("mastmirror.reconcile")


@dataclass
class ReconcileOutcome:
    """What one reconcile run settled."""

    checked: int = 0
    done: int = 0
    failed: int = 0
    requeued: int = 0
    in_flight: int = 0


def reconcile(store: StateStore, outputs: OutputStore, policy: ExecutorSection, *,
              executor: Executor | None = None, now: float | None = None,
              index: Indexer | None = None) -> ReconcileOutcome:
    """One pass over the datasets in flight (those done are queued for the index)."""
    now = time.time() if now is None else now
    out = ReconcileOutcome()
    rows = store.in_flight()
    out.checked = len(rows)
    results = outputs.find_many([(r.obs_id, r.input_key) for r in rows]) if rows else {}
    by_id = {r.obs_id: r for r in rows}

    finished = [Finished(obs_id=res.obs_id, catalog_key=res.key, sources=res.sources,
                         duration_ms=res.duration_ms, bytes_read=res.bytes_read,
                         peak_rss_mb=res.peak_rss_mb)
                for res in results.values() if res.kind == "catalog"]
    done = store.mark_done(finished, now=now)
    for obs_id in done:
        res = results[obs_id]
        log.info("done", obs_id=obs_id, sources=res.sources, duration_ms=res.duration_ms,
                 attempt=by_id[obs_id].dispatches)
        out.done += 1
    if index is not None:
        # generation: 1 until the state's rows carry it (the re-catalogue work adds it).
        index.queue([Done(o, getattr(by_id[o], "generation", 1), results[o].key)
                     for o in done])

    failures = [(res.obs_id, by_id[res.obs_id].dispatches, res.reason or "failed",
                 res.retryable)
                for res in results.values()
                if res.kind == "error" and res.attempt == by_id[res.obs_id].dispatches]
    if executor is not None:
        failures += [(lost.obs_id, lost.dispatch, lost.reason, True)
                     for lost in executor.drain_lost()]
    settled = store.fail_or_requeue(failures, max_attempts=policy.max_attempts,
                                    backoff_s=policy.retry_backoff_seconds, now=now)
    settled += store.expire(timeout_s=policy.timeout_seconds,
                            max_attempts=policy.max_attempts, now=now)
    for t in settled:
        _log_transition(t)
        if t.state == "failed":
            out.failed += 1
        else:
            out.requeued += 1
    out.in_flight = store.count_in_flight()
    return out


def _log_transition(t: Transition) -> None:
    if t.state == "failed":
        log.warning("failed", obs_id=t.obs_id, attempts=t.attempts, reason=t.reason)
    else:
        log.info("will retry", obs_id=t.obs_id, attempts=t.attempts, reason=t.reason)
