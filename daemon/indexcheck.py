"""Make the detection index again from the output store, and check it against the state
and the catalogs (``mastmirror index rebuild | check``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.healpix import pixel_range
from daemon.index import (
    IndexFault,
    IndexWriter,
    Manifest,
    read_fragment,
    read_manifest,
    read_registry,
)
from daemon.indexing import BATCH, datasets, done_datasets, read_catalogs
from daemon.indexstore import IndexStore
from daemon.outputs import OutputStore
from lambda_sep.storage import StorageError
from state.store import StateStore


@dataclass
class RebuildOutcome:
    """What ``rebuild`` did."""

    catalogs: int = 0
    rows: int = 0
    unusable: list[tuple[str, str]] = field(default_factory=list)  # (obs_id, why)
    commit: int = 0


def rebuild(url: str, store: StateStore, outputs: OutputStore, *, batch: int = BATCH,
            progress: Callable[[int, int], None] | None = None) -> RebuildOutcome:
    """Make the index again from the catalogs of every done dataset. Readers see the old
    index until the new one is complete (one commit at the end); a rebuild stopped
    part-way leaves the old one."""
    done = sorted(done_datasets(store).values(), key=lambda d: d.catalog_key)
    writer = IndexWriter.open(url)
    writer.reset()
    out = RebuildOutcome()
    for start in range(0, len(done), batch):
        chunk = done[start:start + batch]
        parsed, later, bad = read_catalogs(outputs, chunk)
        if later:
            raise StorageError(f"{len(later)} catalogs could not be read from {outputs.url} "
                               "(storage trouble); the old index is unchanged", retryable=True)
        out.unusable += [(d.obs_id, why) for d, why in bad]
        added = writer.add(parsed, publish=False)
        out.catalogs += len(added.added) + len(added.replaced)
        out.rows += added.rows
        if progress is not None:
            progress(min(start + batch, len(done)), len(done))
    writer.publish()
    out.commit = writer.published.commit
    return out


@dataclass
class CheckReport:
    """``index check``: what the index holds and every way it differs."""

    commit: int = 0
    catalogs: int = 0
    rows: int = 0
    partitions: int = 0
    fragments: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # differences that are not faults

    @property
    def ok(self) -> bool:
        """True when the index, the state and the catalogs agree."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The report for ``--json``."""
        return {"ok": self.ok, "commit": self.commit, "catalogs": self.catalogs,
                "rows": self.rows, "partitions": self.partitions, "fragments": self.fragments,
                "problems": self.problems, "notes": self.notes}


class _Moved(Exception):
    """A commit replaced what a check was reading; it starts again on the new one."""


def check(url: str, store: StateStore, outputs: OutputStore, *, limit: int = 20
          ) -> CheckReport:
    """Compare the index with itself (files, rows per catalog, tiling), the state (done
    datasets and generations) and the output store (catalogs present, source counts).
    Read-only, also while the daemon writes. At most ``limit`` examples are listed per kind
    of problem."""
    istore = IndexStore(url)
    for _ in range(3):
        manifest = read_manifest(istore)
        if manifest is None:
            return CheckReport(problems=[f"no index at {url}"])
        try:
            return _check(istore, manifest, store, outputs, limit)
        except _Moved:
            continue
    raise IndexFault(f"{url}: the index changed under three checks in a row; try again")


def _check(istore: IndexStore, manifest: Manifest, store: StateStore, outputs: OutputStore,
           limit: int) -> CheckReport:
    rep = CheckReport(commit=manifest.commit, catalogs=manifest.catalogs, rows=manifest.rows,
                      partitions=len(manifest.partitions),
                      fragments=sum(len(v) for v in manifest.partitions.values()))
    problems: dict[str, list[str]] = {}

    def problem(kind: str, example: str) -> None:
        problems.setdefault(kind, []).append(example)

    registry = _unless_moved(istore, manifest, lambda: read_registry(istore, manifest))
    held = {o: (g, k, r, s) for o, g, k, r, s in zip(
        *(registry[c].to_pylist() for c in ("obs_id", "generation", "catalog_key", "rows",
                                              "skipped")), strict=True)}
    data = _scan(istore, manifest, problem)
    for obs_id, (gen, _key, rows, _skipped) in held.items():
        if data.pop((obs_id, gen), 0) != rows:
            problem("rows in the data differ from the catalogs file", obs_id)
    for (obs_id, gen), n in data.items():
        problem("rows of catalogs the index does not list", f"{obs_id} generation {gen}: {n}")
    live = {f.name for f in manifest.fragments()}
    leftovers = [e.name for e in istore.list("dataset")
                 if e.name.startswith("dataset/Norder=") and e.name not in live]
    if leftovers:
        rep.notes.append(f"{len(leftovers)} file(s) no commit names (an interrupted write, "
                         "or one in progress; the next writer deletes them)")

    state = {d.obs_id: (d, sources, st) for d, sources, st in datasets(store, "1")}
    present = outputs.catalog_keys()
    awaiting = 0
    for obs_id, (gen, key, rows, skipped) in held.items():
        known = state.get(obs_id)
        if known is None:
            problem("held but unknown to the state", obs_id)
            continue
        d, sources, st = known
        if st != "done":
            if gen < d.generation:
                awaiting += 1  # re-queued after reprocessing: the old rows stay until then
            else:
                problem("held but not done in the state", f"{obs_id} ({st})")
        elif (gen, key) != (d.generation, d.catalog_key):
            problem("held at another generation or catalog than the state's",
                    f"{obs_id}: generation {gen} {key}, state {d.generation} {d.catalog_key}")
        elif sources is not None and rows + skipped != sources:
            problem("row counts differ from the catalog's source count",
                    f"{obs_id}: {rows} + {skipped} without position, catalog {sources}")
        if key not in present:
            problem("catalog missing from the output store", f"{obs_id}: {key}")
    for obs_id, (_d, _sources, st) in state.items():
        if st == "done" and obs_id not in held:
            problem("done but not in the index", obs_id)
    if awaiting:
        rep.notes.append(f"{awaiting} dataset(s) re-queued after reprocessing; the index "
                         "keeps their previous catalog until the new one is done")
    for kind, examples in problems.items():
        shown = ", ".join(examples[:limit]) + (" ..." if len(examples) > limit else "")
        rep.problems.append(f"{kind}: {len(examples)} ({shown})")
    return rep


def _unless_moved(istore: IndexStore, manifest: Manifest, read: Callable[[], Any]) -> Any:
    """``read()``; a missing file means a newer commit replaced it (_Moved) or, if the
    commit is still current, damage (FileNotFoundError)."""
    try:
        return read()
    except FileNotFoundError:
        now = read_manifest(istore)
        if now is not None and now.commit != manifest.commit:
            raise _Moved from None
        raise


def _scan(istore: IndexStore, manifest: Manifest, problem: Callable[[str, str], None]
          ) -> dict[tuple[str, int], int]:
    """Rows per (obs_id, generation) in the data; rows outside their partition reported."""
    counts: dict[tuple[str, int], int] = {}
    for key, frags in manifest.partitions.items():
        lo, hi = pixel_range(*key)
        for frag in frags:
            try:
                t = _unless_moved(istore, manifest, functools.partial(
                    read_fragment, istore, frag.name, ["_healpix_29", "obs_id", "generation"]))
            except FileNotFoundError:
                problem("fragments missing", frag.name)
                continue
            hp = t["_healpix_29"].to_numpy()
            if len(hp) and (hp.min() < lo or hp.max() >= hi):
                problem("rows outside their partition", frag.name)
            if t.num_rows != frag.rows:
                problem("fragments whose row count differs from the manifest", frag.name)
            grouped = t.group_by(["obs_id", "generation"]).aggregate([([], "count_all")])
            for o, g, n in zip(*(grouped[c].to_pylist() for c in
                                 ("obs_id", "generation", "count_all")), strict=True):
                counts[(o, g)] = counts.get((o, g), 0) + n
    return counts
