"""The detection index kept in step with the state: the reconcile hook, rebuild and check.

When reconcile marks datasets done, their catalogs are read from the output store and added
to the index. Indexing never holds up or undoes reconcile: a dataset is done whether or not
its catalog reached the index. What the index lacks (a failed write, a daemon stopped or
killed in between, an index started on an existing mirror) is found by comparing the state's
done datasets with what the index holds, the first time the hook runs in a process, and is
added a bounded number per reconcile pass (a backlog) so a large catch-up never stalls the
daemon. ``rebuild`` makes the index again from the output store; ``check`` compares it with
the state and the catalogs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.catalog_rows import CatalogError, CatalogRows, read_catalog
from daemon.healpix import pixel_range
from daemon.index import (
    IndexFault,
    IndexWriter,
    Manifest,
    read_fragment,
    read_manifest,
    read_registry,
)
from daemon.indexstore import IndexStore
from daemon.outputs import OutputStore, catalog_key
from lambda_sep.storage import StorageError
from state.store import StateStore

log = structlog.get_logger("mastmirror.index")

BATCH = 500  # catalogs per commit
PER_PASS = 2000  # catalogs a reconcile pass takes from the backlog, at most (about 10 s)
READ_THREADS = 16  # catalogs read from the output store at once


@dataclass(frozen=True)
class Done:
    """A done dataset whose catalog belongs in the index."""

    obs_id: str
    generation: int
    catalog_key: str


def done_datasets(store: StateStore) -> dict[str, Done]:
    """Every done dataset, by obs_id."""
    return {d.obs_id: d for d, _sources, _state in _datasets(store, "state = 'done'")}


def _datasets(store: StateStore, where: str) -> list[tuple[Done, int | None, str]]:
    # generation: 1 until the state records it (datasets.generation arrives with the
    # re-catalogue work).
    gen = "generation" if "generation" in store.db["datasets"].columns_dict else "1"
    rows = store.db.execute(
        f"SELECT obs_id, {gen}, catalog_key, input_key, sources, state FROM datasets "
        f"WHERE {where}").fetchall()
    return [(Done(o, int(g), k or catalog_key(i)), s, st) for o, g, k, i, s, st in rows]


def read_catalogs(outputs: OutputStore, items: Sequence[Done]
                  ) -> tuple[list[CatalogRows], list[Done], list[tuple[Done, str]]]:
    """Read and parse the catalogs of ``items``: (parsed, unreachable now, unusable with why).

    Unreachable (storage trouble) is worth another try later; unusable (missing, not a
    catalog) is not, until something changes the output store.
    """
    def one(d: Done) -> tuple[Done, CatalogRows | str | None]:
        try:
            raw = outputs.read(d.catalog_key)
        except StorageError as exc:
            if exc.retryable:
                return d, None
            return d, f"cannot read {d.catalog_key}: {exc}"
        if raw is None:
            return d, f"catalog {d.catalog_key} is missing from {outputs.url}"
        try:
            return d, read_catalog(raw, obs_id=d.obs_id, generation=d.generation,
                                   catalog_key=d.catalog_key)
        except CatalogError as exc:
            return d, f"{d.catalog_key} is not a usable catalog: {exc}"

    parsed, later, bad = [], [], []
    for d, got in _readers().map(one, items):
        if isinstance(got, CatalogRows):
            parsed.append(got)
        elif got is None:
            later.append(d)
        else:
            bad.append((d, got))
    return parsed, later, bad


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _readers() -> ThreadPoolExecutor:
    """The threads that read catalogs (one pool per process: a pass starts none)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=READ_THREADS,
                                       thread_name_prefix="index-read")
        return _pool


class Indexer:
    """Adds done datasets' catalogs to the index at ``url`` (the reconcile hook)."""

    def __init__(self, url: str, outputs: OutputStore, *, per_pass: int = PER_PASS,
                 batch: int = BATCH) -> None:
        """Nothing is opened until the first ``add_done``."""
        self.url = url
        self.outputs = outputs
        self.per_pass = per_pass
        self.batch = batch
        self._writer: IndexWriter | None = None
        self._backlog: dict[str, Done] | None = None  # None: not compared with the state yet
        self._lock = threading.Lock()

    @property
    def backlog(self) -> int:
        """Done datasets known to be missing from the index (-1: not looked yet)."""
        return -1 if self._backlog is None else len(self._backlog)

    def add_done(self, store: StateStore, done: Sequence[Done] = ()) -> int:
        """Index ``done`` and up to ``per_pass`` datasets of the backlog; returns how many
        catalogs went in. Never raises: what fails stays in the backlog for the next call."""
        with self._lock:
            try:
                if self._writer is None:
                    self._writer = IndexWriter.open(self.url)
                if self._backlog is None:
                    self._backlog = _missing(done_datasets(store), self._writer)
                    if self._backlog:
                        log.info("index catching up", missing=len(self._backlog))
                for d in done:
                    self._backlog[d.obs_id] = d
                return self._step()
            except Exception as exc:  # the index must never take reconcile down with it
                log.error("index update failed; it will be tried again", index=self.url,
                          error=f"{type(exc).__name__}: {exc}")
                self._writer = None  # reopen and recover next time
                return 0

    def drain(self, store: StateStore) -> int:
        """``add_done`` until the backlog is empty or stops shrinking; returns the count."""
        total = 0
        while True:
            added = self.add_done(store)
            total += added
            if not added or not self._backlog:
                return total

    def _step(self) -> int:
        assert self._writer is not None and self._backlog is not None
        todo = list(self._backlog.values())[: self.per_pass]
        added = 0
        for start in range(0, len(todo), self.batch):
            chunk = todo[start:start + self.batch]
            parsed, later, bad = read_catalogs(self.outputs, chunk)
            for d, why in bad:
                log.warning("not indexed", obs_id=d.obs_id, generation=d.generation,
                            reason=why)
                del self._backlog[d.obs_id]
            outcome = self._writer.add(parsed)
            for c in parsed:
                del self._backlog[c.obs_id]
            for obs_id in outcome.replaced:
                log.info("index rows replaced", obs_id=obs_id,
                         generation=self._writer.held()[obs_id][0])
            for obs_id in outcome.stale:
                log.info("not indexed: the index holds a newer generation", obs_id=obs_id)
            added += len(outcome.added) + len(outcome.replaced)
            if later:
                log.warning("catalogs unreachable; indexing them later", datasets=len(later),
                            obs_ids=[d.obs_id for d in later[:20]])
        if added:
            log.info("index commit", catalogs=added, commit=self._writer.published.commit,
                     rows=self._writer.published.rows, backlog=len(self._backlog))
        return added


def _missing(done: dict[str, Done], writer: IndexWriter) -> dict[str, Done]:
    held = writer.held()
    return {o: d for o, d in done.items()
            if held.get(o, (None, None)) != (d.generation, d.catalog_key)}


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

    state = {d.obs_id: (d, sources, st) for d, sources, st in _datasets(store, "1")}
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
                t = _unless_moved(istore, manifest, lambda name=frag.name: read_fragment(
                    istore, name, ["_healpix_29", "obs_id", "generation"]))
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
