"""Dispatch: new -> dispatched, one event per dataset (or per ``[executor] batch`` datasets),
within the in-flight bound.

Datasets are marked dispatched (one transaction per claim) *before* the events leave, so a
crash in between costs a timeout and a second invocation, never a lost dataset. An event
that never reached the function (throttled past every retry, no network) is put back
without counting an attempt, every dataset it carried alike. Datasets of one batch are
neighbours in obs_id order, so their results sit side by side in the output store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.config import Config
from daemon.executors import Executor
from lambda_sep.contract import exposures, make_batch, make_event
from state.store import Claim, DatasetRow, Sent, StateStore

log = structlog.get_logger("mastmirror.dispatch")

# Meta counter: Lambda invocations sent, ever (the request charge of the spend estimate).
LAMBDA_REQUESTS = "spend.lambda_requests"


def event_for(row: DatasetRow, config: Config) -> dict[str, Any]:
    """The event for one dataset: the same dict for the local pool and for Lambda."""
    return make_event(obs_id=row.obs_id, bucket=config.archive.bucket, key=row.input_key,
                      output=config.output_url, sep=config.sep, attempt=row.dispatches)


@dataclass
class DispatchOutcome:
    """What one dispatch run did."""

    sent: int = 0  # datasets
    invocations: int = 0  # events that reached the function
    returned: int = 0
    in_flight: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # datasets not sent, by kind


def dispatch(store: StateStore, executor: Executor, config: Config, *, run_id: str,
             batch: int = 500, limit: int | None = None) -> DispatchOutcome:
    """Send new datasets until the in-flight bound (or ``limit``) is reached or none remain."""
    out = DispatchOutcome()
    bound = config.executor.in_flight_limit
    if executor.in_flight_cap is not None:  # what Lambda can run at once, when less
        bound = min(bound, executor.in_flight_cap)
    while True:
        room = bound - store.count_in_flight()
        if limit is not None:
            room = min(room, limit - out.sent)
        if room <= 0:
            break
        rows = store.claim_new(min(room, batch), executor=executor.kind, run_id=run_id)
        if not rows:
            break
        events = [event_for(r, config) for r in rows]
        size = config.executor.batch
        if size > 1:
            events = [make_batch(events[i:i + size]) for i in range(0, len(events), size)]
        try:
            results = executor.submit(events)
        except BaseException as exc:
            # Whatever went wrong, these never reached the function: give them back now
            # rather than after a timeout.
            store.unclaim([Claim(r.obs_id, r.dispatches) for r in rows],
                          reason=f"not sent: {type(exc).__name__}: {exc}")
            raise
        ok = [Sent(s.obs_id, s.request_id or "", s.dispatch) for s in results if s.error is None]
        if ok:
            store.set_request_ids(ok)
            invocations = len({s.request_id for s in ok})  # a batch's exposures share one
            out.invocations += invocations
            if executor.kind == "lambda":  # Lambda's request charge, for the spend estimate
                store.set_meta({}, add={LAMBDA_REQUESTS: invocations})
        for s in results:
            if s.error is None:
                log.info("dispatched", obs_id=s.obs_id, attempt=s.dispatch,
                         request_id=s.request_id, executor=executor.kind)
        failed = [s for s in results if s.error is not None]
        if failed:
            back = store.unclaim([Claim(s.obs_id, s.dispatch) for s in failed],
                                 reason=failed[0].error or "not sent")
            for s in failed:
                log.warning("not dispatched", obs_id=s.obs_id, attempt=s.dispatch, error=s.error)
            out.returned += len(back)
            out.refused.update(s.kind or "other" for s in failed)
        out.sent += len(ok)
        if failed:
            break  # the executor is refusing work; try again on the next run
    out.in_flight = store.count_in_flight()
    return out


def unsent(store: StateStore, events: list[Mapping[str, Any]], reason: str) -> int:
    """Put back events an executor accepted but never started (at shutdown)."""
    back = store.unclaim([Claim(e["obs_id"], int(e["attempt"]))
                          for event in events for e in exposures(dict(event))], reason=reason)
    for t in back:
        log.info("requeued", obs_id=t.obs_id, reason=reason)
    return len(back)
