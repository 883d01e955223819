"""Several exposures in one event (``[executor] batch`` above 1).

A batch event carries what its exposures share once, and each exposure's own fields in a
list, in the order the function works through them::

    {"batch": [{"obs_id": "icxe15wwq", "attempt": 1,
                "input": {"bucket": "stpubdata",
                          "key": "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"}},
               {"obs_id": "icxe15wxq", "attempt": 3, "input": {...}}],
     "output": "s3://bucket/prefix",
     "sep": {...}}

Each item expands to exactly the single-exposure event (``lambda_sep.event``) with the shared
``output`` and ``sep``: it is validated alone and gets its own catalog or marker, so one bad
item costs only itself. A single-exposure event is a batch of one. Standard library only:
the daemon builds batches with it without importing numpy or astropy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["BATCH", "ITEM_FIELDS", "MAX_BATCH", "SHARED_FIELDS", "BatchError", "exposures",
           "make_batch"]

BATCH = "batch"
# Lambda takes asynchronous events of up to 256 KB; an item is ~150 bytes, and a hundred
# exposures run ~30 s at 1 vCPU, far inside Lambda's 900 s.
MAX_BATCH = 100
ITEM_FIELDS = ("obs_id", "input", "attempt")
SHARED_FIELDS = ("output", "sep")


class BatchError(ValueError):
    """The event's ``batch`` is not a list of 1 to MAX_BATCH exposures."""


def make_batch(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One event for single-exposure ``events`` that share their output and parameters."""
    if not 1 <= len(events) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} exposures, not {len(events)}")
    first = events[0]
    for e in events[1:]:
        if any(e[k] != first[k] for k in SHARED_FIELDS):
            raise ValueError("the events of a batch must share output and sep")
    return {BATCH: [{k: e[k] for k in ITEM_FIELDS} for e in events],
            **{k: first[k] for k in SHARED_FIELDS}}


def exposures(event: Any) -> list[Any]:
    """The single-exposure events ``event`` carries: each item of its batch with the shared
    fields, or the event itself when it is not a batch. Items are passed on as they are
    (validating them is the function's work); a ``batch`` that is not a list of 1 to
    MAX_BATCH entries raises :class:`BatchError`."""
    if not isinstance(event, dict) or BATCH not in event:
        return [event]
    items = event[BATCH]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        size = len(items) if isinstance(items, list) else type(items).__name__
        raise BatchError(f"batch must be a list of 1 to {MAX_BATCH} exposures, not {size}")
    shared = {k: event.get(k) for k in SHARED_FIELDS}
    return [{**item, **shared} if isinstance(item, dict) else item for item in items]
