"""The detection index kept in step with the state: the reconcile hook.

When reconcile marks datasets done, their catalogs are read from the output store and added
to the index. Indexing never holds up or undoes reconcile: a dataset is done whether or not
its catalog reached the index. What the index lacks (a failed write, a daemon stopped or
killed in between, an index started on an existing mirror) is found by comparing the state's
done datasets with what the index holds, the first time the hook runs in a process, and is
added a bounded number per reconcile pass (a backlog) so a large catch-up never stalls the
daemon. The index's Parquet machinery (pyarrow, a quarter of the daemon's start-up) is
imported by that first pass, after the daemon is ready, not when this module is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from daemon.catalog_rows import CatalogError, CatalogRows, read_catalog
from daemon.outputs import OutputStore
from lambda_sep.contract import catalog_key
from lambda_sep.storage import StorageError
from state.store import StateStore

if TYPE_CHECKING:
    from daemon.index import IndexWriter

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
    return {d.obs_id: d for d, _sources, _state in datasets(store, "state = 'done'")}


def datasets(store: StateStore, where: str) -> list[tuple[Done, int | None, str]]:
    """(Done, sources, state) of the datasets matching the SQL condition ``where``."""
    rows = store.db.execute(
        "SELECT obs_id, generation, catalog_key, input_key, sources, state FROM datasets "
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
    """Adds done datasets' catalogs to the index at ``url``, on a thread of its own.

    Reconcile hands it the datasets it marked done (``queue``: no I/O, never blocks), so
    the index never slows a state transition down; the thread (``start``) takes them, and
    the backlog, a bounded ``step`` at a time.
    """

    def __init__(self, url: str, outputs: OutputStore, store: StateStore, *,
                 per_pass: int = PER_PASS, batch: int = BATCH, idle_s: float = 5.0,
                 first_after_s: float = 10.0) -> None:
        """Nothing is opened until the first ``step``."""
        self.url = url
        self.outputs = outputs
        self.store = store
        self.per_pass = per_pass
        self.batch = batch
        self.idle_s = idle_s  # between steps when there is nothing new (or after a failure)
        # The thread's first step (pyarrow's import, the catch-up) waits this long, or for
        # the first dataset done: a starting daemon's own work (the first poll, starting
        # the worker pool) goes first.
        self.first_after_s = first_after_s
        self._writer: IndexWriter | None = None
        self._backlog: dict[str, Done] | None = None  # None: not compared with the state yet
        self._queued: list[Done] = []
        self._lock = threading.Lock()  # one step at a time
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def backlog(self) -> int:
        """Done datasets known to be missing from the index (-1: not looked yet)."""
        return -1 if self._backlog is None else len(self._backlog) + len(self._queued)

    def queue(self, done: Sequence[Done]) -> None:
        """Datasets reconcile just marked done; the next step indexes them."""
        if done:
            with self._queue_lock:
                self._queued.extend(done)
            self._wake.set()

    def step(self) -> int:
        """Index what was queued and up to ``per_pass`` datasets of the backlog; returns
        how many left the backlog. Never raises: what fails stays for the next step."""
        with self._lock:
            try:
                if self._writer is None:
                    from daemon.index import IndexWriter

                    self._writer = IndexWriter.open(self.url)
                if self._backlog is None:
                    self._backlog = _missing(done_datasets(self.store), self._writer)
                    if self._backlog:
                        log.info("index catching up", missing=len(self._backlog))
                with self._queue_lock:
                    queued, self._queued = self._queued, []
                # A dataset queued before the backlog was read is in both: once is enough.
                self._backlog.update((d.obs_id, d) for d in queued)
                return self._step()
            except Exception as exc:  # the index must never take the daemon down with it
                log.error("index update failed; it will be tried again", index=self.url,
                          error=f"{type(exc).__name__}: {exc}")
                self._writer = None  # reopen and recover next time
                return 0

    def drain(self) -> int:
        """``step`` until the backlog is empty or stops shrinking; returns the count."""
        total = 0
        while True:
            settled = self.step()
            total += settled
            if not settled or not self.backlog:
                return total

    def start(self) -> None:
        """Index on a thread of its own until ``close``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="index", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self._wake.wait(self.first_after_s)
        self._wake.clear()
        while not self._stop.is_set():
            if not self.step() or not self.backlog:
                self._wake.wait(self.idle_s)
                self._wake.clear()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after the step in progress (a commit interrupted by the process
        ending is safe, as a kill -9 is)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._thread is None or not self._thread.is_alive():
            with self._lock:  # a step run by the caller (run --once) may hold it
                if self._writer is not None:
                    self._writer.store.close()

    def _step(self) -> int:
        assert self._writer is not None and self._backlog is not None
        todo = list(self._backlog.values())[: self.per_pass]
        settled = added = 0
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
                if c.obs_id in outcome.replaced:
                    log.info("index rows replaced", obs_id=c.obs_id, generation=c.generation)
                elif c.obs_id in outcome.stale:
                    log.info("not indexed: the index holds a newer generation",
                             obs_id=c.obs_id, generation=c.generation)
            settled += len(bad) + len(parsed)
            added += len(outcome.added) + len(outcome.replaced)
            if later:
                log.warning("catalogs unreachable; indexing them later", datasets=len(later),
                            obs_ids=[d.obs_id for d in later[:20]])
        if added:
            log.info("index commit", catalogs=added, commit=self._writer.published.commit,
                     rows=self._writer.published.rows, backlog=len(self._backlog))
        return settled


def _missing(done: dict[str, Done], writer: IndexWriter) -> dict[str, Done]:
    held = writer.held()
    return {o: d for o, d in done.items()
            if held.get(o, (None, None)) != (d.generation, d.catalog_key)}
