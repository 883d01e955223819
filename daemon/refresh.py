"""Refresh: compare catalogued inputs with what the archive holds now.

HST data are reprocessed when calibrations improve, at the same key and with the same
release date, so discovery never sees them again; the catalog records the input's ETag and
size (INETAG/INSIZE, and the state database). A HEAD of each input tells: the same ETag and
size, unchanged (nothing is rewritten); another, the archive reprocessed it and the dataset
goes back to new as its next generation (its old catalog stays in place until the new one
replaces it); none, the input was withdrawn (the catalog is kept and flagged). Each batch's
findings, counters and walk position are one transaction.

``refresh`` is the command (some datasets, or every one); ``walk`` is the daemon's
background job, a few datasets at a time from where it stopped, round and round;
``check`` is what both (and the archive notifications) do with the datasets they picked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from daemon.archive import ArchiveBucket, Requests
from daemon.outputs import OutputStore
from state.store import Catalogued, Changed, Checked, StateStore

log = structlog.get_logger("mastmirror.refresh")

#: Datasets per page of ``refresh --all`` (one read of the state, one transaction each).
PAGE = 1000
#: The daemon's walk: at most this many datasets per run of the job.
MAX_BATCH = 200


@dataclass
class RefreshOutcome:
    """What one refresh found."""

    checked: int = 0
    unchanged: int = 0
    changed: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # obs_id -> why it was not checked
    missing: list[str] = field(default_factory=list)  # asked for, but not catalogued
    requests: Requests = field(default_factory=Requests)
    seconds: float = 0.0

    def add(self, other: RefreshOutcome) -> None:
        """Fold another batch's findings into this one."""
        self.checked += other.checked
        self.unchanged += other.unchanged
        self.changed += other.changed
        self.withdrawn += other.withdrawn
        self.unknown.update(other.unknown)
        self.requests.add(other.requests)


def check(store: StateStore, archive: ArchiveBucket, rows: Sequence[Catalogued], *,
          outputs: OutputStore | None = None, meta: dict[str, str] | None = None,
          add: dict[str, float] | None = None, source: str = "refresh",
          now: float | None = None) -> RefreshOutcome:
    """HEAD the inputs of these done datasets and record what changed, in one transaction
    (with ``meta``/``add``: the caller's position and counters)."""
    out = RefreshOutcome()
    probes = archive.probe_many(r.input_key for r in rows)
    changed: list[Changed] = []
    checked: list[Checked] = []
    for row in rows:
        probe = probes[row.input_key]
        out.requests.add(probe)
        if probe.state == "gone":
            out.withdrawn.append(row.obs_id)
            continue
        if probe.state != "present":
            out.unknown[row.obs_id] = probe.reason or "not checked"
            continue
        etag, size = row.input_etag, row.input_size
        learnt = etag is None and outputs is not None
        if etag is None and outputs is not None:
            # Catalogued before the state recorded inputs: the catalog itself says (INETAG).
            found = outputs.find(row.obs_id, row.input_key)
            etag = found.input_etag if found is not None and found.kind == "catalog" else None
            size = found.input_size if found is not None else None
        if etag == probe.etag and (size is None or size == probe.size):
            checked.append(Checked(row.obs_id, etag, size) if learnt else Checked(row.obs_id))
        else:
            changed.append(Changed(row.obs_id, row.input_etag, probe.etag or "", probe.size))
    out.checked = len(rows) - len(out.unknown)
    counters = {f"{source}_checked": out.checked, f"{source}_withdrawn": len(out.withdrawn),
                f"{source}_unknown": len(out.unknown), f"{source}_heads": out.requests.heads,
                f"{source}_lists": out.requests.lists, **(add or {})}
    moved = store.record_refresh(changed=changed, checked=checked, withdrawn=out.withdrawn,
                                 meta=meta, add=counters, count_changed=f"{source}_changed",
                                 now=now)
    out.changed = [t.obs_id for t in moved]
    out.unchanged = len(checked)
    for t in moved:
        log.info("input changed; queued as its next generation", obs_id=t.obs_id,
                 reason=t.reason, source=source)
    for obs_id in out.withdrawn:
        log.warning("input withdrawn from the archive; catalog kept", obs_id=obs_id,
                    source=source)
    for obs_id, reason in out.unknown.items():
        log.warning("input not checked", obs_id=obs_id, reason=reason, source=source)
    return out


def refresh(store: StateStore, archive: ArchiveBucket, outputs: OutputStore | None = None, *,
            obs_ids: Sequence[str] | None = None, page: int = PAGE) -> RefreshOutcome:
    """Check the given done datasets (``obs_ids``), or every done dataset (None), page by
    page. Datasets of ``obs_ids`` that are not done are left out (the caller reports them)."""
    started = time.perf_counter()
    out = RefreshOutcome()
    if obs_ids is not None:
        rows = store.catalogued(obs_ids=list(dict.fromkeys(obs_ids)))
        found = {r.obs_id for r in rows}
        out.missing = [o for o in dict.fromkeys(obs_ids) if o not in found]
        for start in range(0, len(rows), page):
            out.add(check(store, archive, rows[start:start + page], outputs=outputs))
    else:
        after = ""
        while rows := store.catalogued(after=after, limit=page):
            out.add(check(store, archive, rows, outputs=outputs))
            after = rows[-1].obs_id
    out.seconds = time.perf_counter() - started
    return out


def pace(per_hour: int) -> tuple[int, float]:
    """(datasets per run, seconds between runs) of the walk for ``per_hour`` an hour: runs
    of up to ``MAX_BATCH``, each minute or more often."""
    batch = min(MAX_BATCH, max(1, math.ceil(per_hour / 60)))
    return batch, 3600.0 * batch / per_hour


def walk(store: StateStore, archive: ArchiveBucket, outputs: OutputStore | None = None, *,
         limit: int, now: float | None = None) -> RefreshOutcome:
    """The next ``limit`` done datasets after the walk's position; past the last one the
    walk starts its next pass from the first. The position moves in the same transaction as
    the findings, so a crash repeats at most the batch it interrupted."""
    now = time.time() if now is None else now
    after = store.meta("refresh_after") or ""
    meta: dict[str, str] = {}
    add: dict[str, float] = {}
    rows = store.catalogued(after=after, limit=limit)
    if not rows and after:  # the end of a pass: the next one starts from the beginning
        after = ""
        rows = store.catalogued(limit=limit)
    if after == "":
        meta.update(refresh_pass_started_at=repr(now), refresh_pass_checked="0")
        add["refresh_pass"] = 1
    if not rows:
        return RefreshOutcome()
    meta.update(refresh_after=rows[-1].obs_id, refresh_at=repr(now))
    add["refresh_pass_checked"] = len(rows)
    return check(store, archive, rows, outputs=outputs, meta=meta, add=add, now=now)
