"""StateStore: every state transition of every dataset, each one SQLite transaction.

The store knows nothing of MAST, AWS or the CLI. Each write method is one ``BEGIN
IMMEDIATE ... COMMIT``: a crash at any instant leaves every dataset in exactly one state,
and every transition is guarded by the state it starts from, so a stale decision (a result
that arrives after a timeout already moved the dataset on) changes nothing.

Connections are per thread (the scheduler runs jobs on several threads); WAL lets
``status`` read a consistent snapshot while the daemon writes.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from state.schema import SCHEMA_VERSION, STATES, SchemaError, migrate, user_version

if TYPE_CHECKING:
    import sqlite_utils

if sqlite3.sqlite_version_info < (3, 35):  # RETURNING and partial-index planning
    raise ImportError(f"mastmirror needs SQLite 3.35 or newer; this Python has "
                      f"{sqlite3.sqlite_version}")


_UNWRITABLE = ("database or disk is full", "attempt to write a readonly database",
               "disk i/o error", "unable to open database file", "read-only file system",
               "no space left on device")


def unwritable(exc: BaseException) -> str | None:
    """Why the database cannot take writes, if ``exc`` says so (disk full, read-only file
    system or file, I/O error); else None.

    These do not go away by retrying the job a moment later: the daemon stops and says so.
    """
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError | OSError):
        text = str(exc).lower()
        if any(marker in text for marker in _UNWRITABLE):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT,
                                                      errno.EIO):
            return str(exc)
    return None


class Discovered(NamedTuple):
    """One exposure as discovery found it."""

    obs_id: str
    input_key: str
    release_mjd: float
    mast_obs_id: str


class Rejected(NamedTuple):
    """A product discovery refused to record (bad name, path tricks), with the reason."""

    name: str
    reason: str


class Transition(NamedTuple):
    """A dataset that changed state, for logging."""

    obs_id: str
    state: str
    attempts: int
    reason: str | None = None


class Finished(NamedTuple):
    """A catalog found in the output store for a dispatched dataset.

    ``attempt`` is the dispatch that wrote it (None when the catalog does not say): a
    catalog from before the dataset's current generation is not this generation's result.
    """

    obs_id: str
    catalog_key: str
    sources: int | None = None
    duration_ms: int | None = None
    bytes_read: int | None = None
    peak_rss_mb: float | None = None
    attempt: int | None = None
    input_etag: str | None = None
    input_size: int | None = None


class Claim(NamedTuple):
    """One dispatch of one dataset: the dataset and its dispatch number (the event's
    ``attempt``). Transitions that settle a dispatch name it, so a late answer about an
    older dispatch changes nothing."""

    obs_id: str
    dispatch: int


class Sent(NamedTuple):
    """A dispatch the executor accepted, with its request id (Lambda's, or the pool's)."""

    obs_id: str
    request_id: str
    dispatch: int


class Failure(NamedTuple):
    """A handled failure of one dispatch; ``retryable`` for transient causes only."""

    obs_id: str
    dispatch: int
    reason: str
    retryable: bool


class Skip(NamedTuple):
    """A dispatch whose input is not something mastmirror catalogues, with the reason."""

    obs_id: str
    dispatch: int
    reason: str


class Changed(NamedTuple):
    """A done dataset whose input in the archive is no longer the one catalogued:
    ``etag``/``size`` were recorded, ``new_etag``/``new_size`` are what the archive holds."""

    obs_id: str
    etag: str | None
    new_etag: str
    new_size: int | None = None


class Catalogued(NamedTuple):
    """A dataset as refresh and notifications see it: its input and what its current
    catalog was made from (``state`` is 'done' for a catalogued one)."""

    obs_id: str
    input_key: str
    input_etag: str | None
    input_size: int | None
    generation: int
    state: str = "done"


class Checked(NamedTuple):
    """A done dataset whose input in the archive is the one catalogued. ``etag``/``size``
    fill in what the state did not record (a catalog made before version 2 recorded it)."""

    obs_id: str
    etag: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class DatasetRow:
    """A dataset as the dispatcher and reconciler need it."""

    obs_id: str
    input_key: str
    state: str
    attempts: int
    dispatches: int
    dispatched_at: float | None
    executor: str | None = None
    request_id: str | None = None
    generation: int = 1
    min_dispatch: int = 1


@dataclass
class Snapshot:
    """What ``status`` shows, read in one transaction."""

    path: str
    schema_version: int
    counts: dict[str, int]
    cursor_mjd: float | None
    last_poll: dict[str, Any] | None
    last_ok_poll_at: float | None
    in_flight: int
    oldest_dispatched_at: float | None
    recent_failures: list[dict[str, Any]]
    done_last_hour: int
    done_last_day: int
    rejected: int
    taken_at: float
    by_executor: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    withdrawn: int = 0
    last_resweep: dict[str, Any] | None = None
    # Product names refused (ever): reason -> count, and a few names each.
    refused_by_reason: dict[str, int] = field(default_factory=dict)
    refused_examples: dict[str, list[str]] = field(default_factory=dict)
    #: the refresh walk's position and the freshness counters (meta keys refresh_*,
    #: notify_*, recatalogued), as stored
    freshness: dict[str, str] = field(default_factory=dict)
    #: the most recently withdrawn inputs: obs_id, input key, since when
    withdrawn_recent: list[dict[str, Any]] = field(default_factory=list)


# failed -> new with a fresh attempt budget, and a fresh wait for an input not archived yet.
_RETRY = "state = 'new', attempts = 0, waiting_since = NULL, not_before = NULL, updated_at = ?"

_ROW_COLUMNS = ("obs_id, input_key, state, attempts, dispatches, dispatched_at, executor, "
                "request_id, generation, min_dispatch")
_CATALOGUED_COLUMNS = "obs_id, input_key, input_etag, input_size, generation, state"

# A discovered exposure; one already known is left as it is (recorded once however often seen).
_INSERT_DATASET = ("INSERT OR IGNORE INTO datasets (obs_id, input_key, release_mjd, mast_obs_id, "
                   "state, discovered_at, updated_at, poll_id) VALUES (?, ?, ?, ?, 'new', ?, ?, ?)")


class StateStore:
    """The SQLite state database (created and migrated on first open unless read-only)."""

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False,
                 busy_timeout_s: float = 30.0):
        """Open (``create``: create and migrate) the database; ``readonly`` never writes."""
        self.path = Path(path)
        create = create and not readonly
        if not create and not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no state database here (has the daemon run?)")
        self._create = create
        self._readonly = readonly
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        conn = self._conn()
        if create:
            if user_version(conn) != SCHEMA_VERSION:
                migrate(conn)
        else:
            version = user_version(conn)
            # Version 0: a daemon has just created the file and is making the schema (one
            # transaction, milliseconds); wait for it rather than report an empty file.
            deadline = time.monotonic() + min(self._busy_timeout_s, 10.0)
            while version == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                version = user_version(conn)
            if version != SCHEMA_VERSION:
                raise SchemaError(f"{self.path}: schema version {version}, expected "
                                  f"{SCHEMA_VERSION}; run the daemon once to migrate it")

    # -- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            mode = "ro" if self._readonly else "rwc" if self._create else "rw"
            conn = self._connect(f"file:{self.path}?mode={mode}")
            if self._create:
                conn.execute("PRAGMA journal_mode = WAL")
            if not self._readonly:
                # NORMAL is crash-safe in WAL mode (a killed process loses nothing committed).
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _connect(self, uri: str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per transition.
        conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                               timeout=self._busy_timeout_s, check_same_thread=False)
        if not self._readonly:
            return conn
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        except sqlite3.OperationalError:
            # A WAL database on read-only media cannot make its shared-memory index; read
            # it as immutable instead (nothing can be writing to a read-only file system).
            conn.close()
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None,
                                   check_same_thread=False)
        return conn

    @property
    def db(self) -> sqlite_utils.Database:
        """The sqlite-utils view of this thread's connection (tables, rows, queries).

        Imported on first use: ``status`` reads through plain SQL and starts faster
        without it (sqlite-utils pulls in numpy).
        """
        import sqlite_utils

        db = getattr(self._local, "db", None)
        if db is None or db.conn is not self._conn():
            db = self._local.db = sqlite_utils.Database(self._conn())
        return db

    def close(self) -> None:
        """Close every connection this store opened (all threads)."""
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back whole on any exception."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN")  # deferred: a WAL read snapshot for every SELECT inside
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    # -- meta / cursor -----------------------------------------------------------------

    def cursor(self) -> float | None:
        """The discovery cursor (MJD of release up to which every window is recorded)."""
        value = self.meta("cursor_mjd")
        return float(value) if value is not None else None

    # -- polls -------------------------------------------------------------------------

    def begin_poll(self, kind: str, window_lo_mjd: float, *, now: float | None = None) -> int:
        """Record that a poll started; returns its id."""
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO polls (kind, started_at, window_lo_mjd) VALUES (?, ?, ?)",
                (kind, time.time() if now is None else now, window_lo_mjd))
            return int(cur.lastrowid or 0)

    def record_window(self, poll_id: int, window_hi_mjd: float, found: Sequence[Discovered],
                      *, observations: int, products: int,
                      rejected: Sequence[Rejected] = (), excluded: int = 0,
                      now: float | None = None) -> int:
        """Insert a window's exposures and move the cursor to its end, in ONE transaction.

        An exposure already known is left as it is (recorded once however often seen). The
        cursor only moves forward: a resweep of older windows leaves it where it is.
        ``excluded``: observations the window left out by their filter. Returns how many
        exposures were new.
        """
        now = time.time() if now is None else now
        with self.transaction() as conn:
            total = "SELECT sum(n) FROM state_counts"
            before = conn.execute(total).fetchone()[0]
            conn.executemany(
                _INSERT_DATASET, ((d.obs_id, d.input_key, d.release_mjd, d.mast_obs_id, now, now,
                                   poll_id) for d in found))
            new = conn.execute(total).fetchone()[0] - before
            conn.executemany(
                "INSERT OR IGNORE INTO rejects (name, reason, first_at, poll_id) "
                "VALUES (?, ?, ?, ?)", ((r.name, r.reason, now, poll_id) for r in rejected))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('cursor_mjd', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
                "WHERE CAST(excluded.value AS REAL) > CAST(meta.value AS REAL)",
                (repr(float(window_hi_mjd)),))
            conn.execute(
                "UPDATE polls SET window_hi_mjd = ?, windows = windows + 1, "
                "observations = observations + ?, products = products + ?, seen = seen + ?, "
                "new = new + ?, rejected = rejected + ?, excluded = excluded + ? WHERE id = ?",
                (window_hi_mjd, observations, products, len(found), new, len(rejected),
                 excluded, poll_id))
        return new

    def record_found(self, found: Sequence[Discovered], *, now: float | None = None
                     ) -> list[str]:
        """Insert exposures learnt of outside a poll (an archive notification MAST
        confirmed), in one transaction; the cursor does not move. Returns the new obs_ids."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return [d.obs_id for d in found if conn.execute(
                _INSERT_DATASET, (d.obs_id, d.input_key, d.release_mjd, d.mast_obs_id, now, now,
                                  None)).rowcount]

    def finish_poll(self, poll_id: int, *, ok: bool, error: str | None = None,
                    listed: int | None = None, recorded: int | None = None,
                    now: float | None = None) -> None:
        """Close a poll as succeeded, or failed with the error; a resweep also records how
        many exposures MAST listed in its range and how many the database holds there."""
        with self.transaction() as conn:
            conn.execute("UPDATE polls SET finished_at = ?, ok = ?, error = ?, listed = ?, "
                         "recorded = ? WHERE id = ?",
                         (time.time() if now is None else now, int(ok), error, listed, recorded,
                          poll_id))

    def count_released(self, lo_mjd: float, hi_mjd: float) -> int:
        """Datasets whose release date is in [lo, hi] (MJD, inclusive, as MAST's ranges)."""
        return int(self._conn().execute(
            "SELECT count(*) FROM datasets WHERE release_mjd BETWEEN ? AND ?",
            (lo_mjd, hi_mjd)).fetchone()[0])

    def last_poll_started(self, kind: str | None = None) -> float | None:
        """When the latest poll (of ``kind``, if given) started; None if there was none."""
        if kind is None:
            row = self._conn().execute("SELECT max(started_at) FROM polls").fetchone()
        else:
            row = self._conn().execute("SELECT max(started_at) FROM polls WHERE kind = ?",
                                       (kind,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def first_poll_started(self) -> float | None:
        """When the first poll (the backfill) started; None on a fresh database."""
        row = self._conn().execute("SELECT min(started_at) FROM polls").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    # -- dispatch ----------------------------------------------------------------------

    def claim_new(self, limit: int, *, executor: str, run_id: str,
                  now: float | None = None) -> list[DatasetRow]:
        """Move up to ``limit`` new datasets (oldest release first) to dispatched.

        Each claimed dataset's ``attempts`` and ``dispatches`` grow by one; the caller then
        invokes them and records request ids. Marking before invoking means a crash in
        between costs a timeout, never a lost dataset.
        """
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        with self.transaction() as conn:
            rows = conn.execute(
                "UPDATE datasets SET state = 'dispatched', attempts = attempts + 1, "
                "dispatches = dispatches + 1, dispatched_at = ?, updated_at = ?, executor = ?, "
                "run_id = ?, request_id = NULL, not_before = NULL WHERE obs_id IN ("
                "SELECT obs_id FROM datasets WHERE state = 'new' AND "
                "(not_before IS NULL OR not_before <= ?) ORDER BY release_mjd, obs_id LIMIT ?) "
                f"RETURNING {_ROW_COLUMNS}",
                (now, now, executor, run_id, now, limit)).fetchall()
        rows.sort(key=lambda r: r[0])
        return [DatasetRow(*r) for r in rows]

    def set_request_ids(self, sent: Iterable[Sent]) -> None:
        """Record each accepted dispatch's request id, for datasets still on that dispatch."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE datasets SET request_id = ? WHERE obs_id = ? AND dispatches = ? "
                "AND state = 'dispatched'", ((s.request_id, s.obs_id, s.dispatch) for s in sent))

    def unclaim(self, items: Iterable[Claim], reason: str,
                *, now: float | None = None) -> list[Transition]:
        """Put back datasets whose invocation never left (throttled past retries, no network).

        The attempt is not counted: the function never saw the event.
        """
        now = time.time() if now is None else now
        out: list[Transition] = []
        with self.transaction() as conn:
            for obs_id, dispatch in items:
                row = conn.execute(
                    "UPDATE datasets SET state = 'new', attempts = max(attempts - 1, 0), "
                    "error = ?, updated_at = ? WHERE obs_id = ? AND dispatches = ? "
                    "AND state = 'dispatched' RETURNING obs_id, attempts",
                    (reason, now, obs_id, dispatch)).fetchone()
                if row:
                    out.append(Transition(row[0], "new", row[1], reason))
        return out

    # -- reconcile ---------------------------------------------------------------------

    def in_flight_pages(self, page: int = 1000) -> Iterator[list[DatasetRow]]:
        """Dispatched datasets, oldest dispatch first, ``page`` at a time.

        Keyset pagination on (dispatched_at, rowid), the key the partial index of
        dispatched datasets already holds: each page is one index range read, whatever the
        number in flight, and rows that change state between pages are neither skipped nor
        read twice (a dataset dispatched again meanwhile comes back at the end).
        """
        after: tuple[float, int] = (float("-inf"), 0)
        while True:
            rows = self._conn().execute(
                f"SELECT rowid, {_ROW_COLUMNS} FROM datasets WHERE state = 'dispatched' "
                "AND (dispatched_at, rowid) > (?, ?) ORDER BY dispatched_at, rowid LIMIT ?",
                (*after, page)).fetchall()
            if not rows:
                return
            after = (rows[-1][6], rows[-1][0])  # dispatched_at, rowid of the last
            yield [DatasetRow(*r[1:]) for r in rows]
            if len(rows) < page:
                return

    def in_flight(self, *, limit: int | None = None) -> list[DatasetRow]:
        """Dispatched datasets, oldest dispatch first."""
        sql = (f"SELECT {_ROW_COLUMNS} FROM datasets WHERE state = 'dispatched' "
               "ORDER BY dispatched_at")
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        return [DatasetRow(*r) for r in self._conn().execute(sql, params).fetchall()]

    def count_waiting(self) -> int:
        """New datasets held because their input is not in the archive bucket yet."""
        return int(self._conn().execute(
            "SELECT count(*) FROM datasets WHERE state = 'new' "
            "AND waiting_since IS NOT NULL").fetchone()[0])

    def count_in_flight(self) -> int:
        """How many datasets are dispatched and unfinished."""
        return int(self._conn().execute(
            "SELECT n FROM state_counts WHERE state = 'dispatched'").fetchone()[0])

    def mark_done(self, finished: Iterable[Finished], *, now: float | None = None) -> list[str]:
        """dispatched -> done for each catalog of the dataset's current generation; returns
        the obs_ids that moved, each with its catalog recorded in the history.

        A catalog written before the current generation's first dispatch (the previous
        generation's, still at the key until the new one replaces it) moves nothing; one
        that does not say which dispatch wrote it counts only for a first generation.
        """
        now = time.time() if now is None else now
        moved: list[str] = []
        with self.transaction() as conn:
            for f in finished:
                row = conn.execute(
                    "UPDATE datasets SET state = 'done', done_at = ?, updated_at = ?, error = NULL,"
                    " waiting_since = NULL, catalog_key = ?, sources = ?, duration_ms = ?, "
                    "bytes_read = ?, peak_rss_mb = ?, input_etag = coalesce(?, input_etag), "
                    "input_size = coalesce(?, input_size), withdrawn_at = NULL "
                    "WHERE obs_id = ? AND state = 'dispatched' "
                    "AND (CASE WHEN ? IS NULL THEN min_dispatch <= 1 ELSE ? >= min_dispatch END) "
                    "RETURNING obs_id, generation, input_etag, input_size",
                    (now, now, f.catalog_key, f.sources, f.duration_ms, f.bytes_read,
                     f.peak_rss_mb, f.input_etag, f.input_size, f.obs_id, f.attempt,
                     f.attempt)).fetchone()
                if row:
                    moved.append(row[0])
                    if row[1] > 1:  # a changed input's next catalog, for status
                        _set_meta(conn, {}, {"recatalogued": 1})
                    conn.execute(
                        "INSERT OR REPLACE INTO catalogs (obs_id, generation, catalog_key, "
                        "input_etag, input_size, sources, attempt, made_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (row[0], row[1], f.catalog_key, row[2], row[3], f.sources, f.attempt,
                         now))
        return moved

    def mark_skipped(self, items: Iterable[Skip], *, now: float | None = None
                     ) -> list[Transition]:
        """dispatched -> skipped (terminal, not a failure) for dispatches of this generation
        whose input is not something mastmirror catalogues."""
        now = time.time() if now is None else now
        out: list[Transition] = []
        with self.transaction() as conn:
            for obs_id, dispatch, reason in items:
                row = conn.execute(
                    "UPDATE datasets SET state = 'skipped', skipped_at = ?, skip_reason = ?, "
                    "updated_at = ?, waiting_since = NULL, error = NULL WHERE obs_id = ? "
                    "AND state = 'dispatched' AND ? >= min_dispatch AND ? <= dispatches "
                    "RETURNING obs_id, attempts",
                    (now, reason, now, obs_id, dispatch, dispatch)).fetchone()
                if row:
                    out.append(Transition(row[0], "skipped", row[1], reason))
        return out

    def hold_missing(self, items: Iterable[Failure], *, wait_s: float,
                     first_delay_s: float = 300.0, max_delay_s: float = 3600.0,
                     now: float | None = None) -> list[Transition]:
        """A dispatch found its input missing from the archive bucket: a wait, not an attempt.

        The dataset goes back to new, held (``waiting_since``), not before a delay that
        doubles with the time already waited (``first_delay_s`` up to ``max_delay_s``). Once
        ``wait_s`` has passed since the later of its release and its discovery (MAST can
        list an exposure before the bucket has it, or list it late), it is failed with
        the reason instead. Only the dispatch named is affected.
        """
        now = time.time() if now is None else now
        # Held until the later of release and discovery plus wait_s; the held dataset's
        # next look waits as long as it has already waited, within [first, max] delay.
        deadline = ("max(coalesce((release_mjd - 40587.0) * 86400.0, discovered_at), "
                    "discovered_at) + :wait")
        sql = (f"UPDATE datasets SET state = CASE WHEN :now < {deadline} THEN 'new' "
               "ELSE 'failed' END, "
               f"failed_at = CASE WHEN :now < {deadline} THEN failed_at ELSE :now END, "
               f"error = CASE WHEN :now < {deadline} THEN :reason "
               "ELSE 'not in the archive after ' || :hours || ' h: ' || :reason END, "
               "attempts = max(attempts - 1, 0), waiting_since = coalesce(waiting_since, :now), "
               "not_before = :now + min(max(:now - coalesce(waiting_since, :now), :first), :max),"
               " updated_at = :now "
               "WHERE obs_id = :obs_id AND dispatches = :dispatch AND state = 'dispatched' "
               "RETURNING obs_id, state, attempts, error")
        out: list[Transition] = []
        with self.transaction() as conn:
            for f in items:
                row = conn.execute(sql, {
                    "now": now, "wait": wait_s, "hours": _fmt_seconds(wait_s / 3600.0),
                    "reason": f.reason, "first": first_delay_s, "max": max_delay_s,
                    "obs_id": f.obs_id, "dispatch": f.dispatch}).fetchone()
                if row:
                    out.append(Transition(row[0], row[1], row[2], row[3]))
        return out

    def fail_or_requeue(self, items: Iterable[Failure], *, max_attempts: int,
                        backoff_s: float = 0.0, now: float | None = None) -> list[Transition]:
        """Settle handled failures of the dispatches they name.

        A retryable failure with attempts to spare goes back to new, not before
        ``backoff_s * 2**(attempts-1)`` seconds; anything else is failed with its reason.
        Only the dispatch that produced the failure is affected.
        """
        now = time.time() if now is None else now
        out: list[Transition] = []
        with self.transaction() as conn:
            for obs_id, dispatch, reason, retryable in items:
                again = "? AND attempts < ?"
                row = conn.execute(
                    f"UPDATE datasets SET state = CASE WHEN {again} THEN 'new' ELSE 'failed' END, "
                    f"failed_at = CASE WHEN {again} THEN failed_at ELSE ? END, "
                    f"not_before = CASE WHEN {again} THEN ? + ? * (1 << (attempts - 1)) END, "
                    "error = ?, updated_at = ? "
                    "WHERE obs_id = ? AND dispatches = ? AND state = 'dispatched' "
                    "RETURNING obs_id, state, attempts",
                    (retryable, max_attempts, retryable, max_attempts, now,
                     retryable, max_attempts, now, backoff_s, reason, now,
                     obs_id, dispatch)).fetchone()
                if row:
                    out.append(Transition(row[0], row[1], row[2], reason))
        return out

    def expire(self, *, timeout_s: float, max_attempts: int, now: float | None = None,
               limit: int = -1) -> list[Transition]:
        """Dispatched longer ago than the timeout: dispatch again if attempts remain, else fail.

        ``limit`` (>= 0) settles at most that many of each kind, oldest first; call again
        until it returns nothing, so a mass timeout never builds one huge list."""
        now = time.time() if now is None else now
        cutoff = now - timeout_s
        oldest = ("obs_id IN (SELECT obs_id FROM datasets WHERE state = 'dispatched' "
                  "AND dispatched_at < :cutoff ORDER BY dispatched_at LIMIT :limit)")
        values = {"now": now, "timeout": _fmt_seconds(timeout_s), "cutoff": cutoff,
                  "max": max_attempts, "limit": limit}
        with self.transaction() as conn:
            failed = conn.execute(
                "UPDATE datasets SET state = 'failed', failed_at = :now, updated_at = :now, "
                "error = 'timed out: no result within ' || :timeout || ' s after ' || attempts "
                f"|| ' attempt(s)' WHERE attempts >= :max AND {oldest} "
                "RETURNING obs_id, attempts, error", values).fetchall()
            again = conn.execute(
                "UPDATE datasets SET state = 'new', updated_at = :now, "
                "error = 'timed out: no result within ' || :timeout || ' s (attempt ' || "
                f"attempts || ')' WHERE {oldest} RETURNING obs_id, attempts, error",
                values).fetchall()
        return ([Transition(o, "failed", a, e) for o, a, e in failed]
                + [Transition(o, "new", a, e) for o, a, e in again])

    def reclaim_orphans(self, *, executor: str, run_id: str,
                        now: float | None = None) -> list[Transition]:
        """Give back datasets a previous process dispatched to its own local pool.

        A local pool dies with its daemon, so those runs will never report; they go back to
        new at once, without counting an attempt (the dataset did nothing wrong).
        """
        now = time.time() if now is None else now
        reason = "requeued: the local worker pool stopped with the previous daemon"
        with self.transaction() as conn:
            rows = conn.execute(
                "UPDATE datasets SET state = 'new', attempts = max(attempts - 1, 0), error = ?, "
                "updated_at = ? WHERE state = 'dispatched' AND executor = ? AND run_id <> ? "
                "RETURNING obs_id, attempts", (reason, now, executor, run_id)).fetchall()
        return [Transition(o, "new", a, reason) for o, a in rows]

    # -- freshness: inputs the archive changed or withdrew --------------------------------

    def catalogued(self, *, after: str | None = None, limit: int = 1000,
                   obs_ids: Sequence[str] | None = None) -> list[Catalogued]:
        """Done datasets in obs_id order after ``after`` (a refresh walks the mirror in
        pages), or just those of ``obs_ids`` that are done."""
        conn = self._conn()
        if obs_ids is not None:
            rows = [r for o in obs_ids for r in conn.execute(
                f"SELECT {_CATALOGUED_COLUMNS} FROM datasets WHERE obs_id = ? AND state = 'done'",
                (o,))]
        else:
            rows = conn.execute(
                f"SELECT {_CATALOGUED_COLUMNS} FROM datasets WHERE state = 'done' AND obs_id > ? "
                "ORDER BY obs_id LIMIT ?", (after or "", limit)).fetchall()
        return [Catalogued(*r) for r in rows]

    def known(self, obs_ids: Iterable[str]) -> dict[str, Catalogued]:
        """The datasets of ``obs_ids`` that exist, in whatever state."""
        conn = self._conn()
        rows = [r for o in dict.fromkeys(obs_ids) for r in conn.execute(
            f"SELECT {_CATALOGUED_COLUMNS} FROM datasets WHERE obs_id = ?", (o,))]
        return {r[0]: Catalogued(*r) for r in rows}

    def mark_changed(self, items: Iterable[Changed], *, now: float | None = None
                     ) -> list[Transition]:
        """done -> new as the next generation, with a fresh attempt budget, for each done
        dataset whose input changed since it was catalogued.

        Guarded by the ETag recorded when it was catalogued, so a change seen twice (a
        refresh and a notification) makes one generation, not two. The previous catalog
        stays at its key until the new one replaces it.
        """
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return _changed(conn, items, now)

    def mark_checked(self, obs_ids: Iterable[str], *, now: float | None = None) -> int:
        """Record that these done datasets' inputs are unchanged (and present) as of now."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return _checked(conn, (Checked(o) for o in obs_ids), now)

    def mark_withdrawn(self, obs_ids: Iterable[str], *, now: float | None = None) -> int:
        """Record that these done datasets' inputs are gone from the archive. The catalog
        stays (and stays done); status flags it."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            return _withdrawn(conn, obs_ids, now)

    def record_refresh(self, *, changed: Iterable[Changed] = (), checked: Iterable[Checked] = (),
                       withdrawn: Iterable[str] = (), meta: dict[str, str] | None = None,
                       add: dict[str, float] | None = None, count_changed: str | None = None,
                       now: float | None = None) -> list[Transition]:
        """What one look at the archive found, in ONE transaction: changed inputs become
        their next generation, unchanged ones are checked, missing ones withdrawn, and the
        walk's position (``meta``) and counters (``add``; ``count_changed``: the counter of
        those that moved) go with them, so a crash never leaves a batch half recorded or
        counted twice. Returns the changed ones that moved."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            moved = _changed(conn, changed, now)
            _checked(conn, checked, now)
            _withdrawn(conn, withdrawn, now)
            counters = dict(add or {})
            if count_changed:
                counters[count_changed] = counters.get(count_changed, 0) + len(moved)
            _set_meta(conn, meta or {}, counters)
        return moved

    def history(self, obs_id: str) -> list[dict[str, Any]]:
        """Every catalog made of one dataset, oldest generation first."""
        cur = self._conn().execute(
            "SELECT obs_id, generation, catalog_key, input_etag, input_size, sources, attempt, "
            "made_at FROM catalogs WHERE obs_id = ? ORDER BY generation", (obs_id,))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- meta: small named values (job positions, counters) ------------------------------

    def meta(self, key: str) -> str | None:
        """A value from the meta table, or None."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, values: dict[str, str], *, add: dict[str, float] | None = None) -> None:
        """Set ``values`` and add ``add`` to numeric counters, in one transaction."""
        with self.transaction() as conn:
            _set_meta(conn, values, add)

    # -- operator actions --------------------------------------------------------------

    def retry_failed(self, obs_ids: Sequence[str] | None = None,
                     *, now: float | None = None) -> list[str]:
        """failed -> new with a fresh attempt budget; all failed, or just ``obs_ids``."""
        now = time.time() if now is None else now
        with self.transaction() as conn:
            if obs_ids is None:
                rows = conn.execute(
                    f"UPDATE datasets SET {_RETRY} WHERE state = 'failed' RETURNING obs_id",
                    (now,)).fetchall()
            else:
                rows = [r for o in obs_ids for r in conn.execute(
                    f"UPDATE datasets SET {_RETRY} WHERE state = 'failed' AND obs_id = ? "
                    "RETURNING obs_id", (now, o))]
        return sorted(r[0] for r in rows)

    # -- reads -------------------------------------------------------------------------

    def get(self, obs_id: str) -> dict[str, Any] | None:
        """Every column of one dataset, or None."""
        rows = list(self.db["datasets"].rows_where("obs_id = ?", [obs_id]))
        return rows[0] if rows else None

    def counts(self) -> dict[str, int]:
        """Datasets per state, plus ``total``."""
        rows = dict(self._conn().execute("SELECT state, n FROM state_counts").fetchall())
        counts = {s: int(rows.get(s, 0)) for s in STATES}
        counts["total"] = sum(counts.values())
        return counts

    def snapshot(self, *, now: float | None = None, failures: int = 10) -> Snapshot:
        """Everything ``status`` shows, from one consistent read transaction."""
        now = time.time() if now is None else now
        with self._read() as conn:
            rows = dict(conn.execute("SELECT state, n FROM state_counts").fetchall())
            counts = {s: int(rows.get(s, 0)) for s in STATES}
            counts["total"] = sum(counts.values())
            cur = conn.execute("SELECT value FROM meta WHERE key = 'cursor_mjd'").fetchone()
            poll = conn.execute(
                f"SELECT {_POLL_COLUMNS} FROM polls ORDER BY id DESC LIMIT 1").fetchone()
            resweep = conn.execute(
                f"SELECT {_POLL_COLUMNS} FROM polls WHERE kind = 'resweep' "
                "ORDER BY id DESC LIMIT 1").fetchone()
            refused = conn.execute(
                "SELECT reason, count(*) FROM rejects GROUP BY reason "
                "ORDER BY count(*) DESC").fetchall()
            examples: dict[str, list[str]] = {
                reason: [r[0] for r in conn.execute(
                    "SELECT name FROM rejects WHERE reason = ? ORDER BY first_at DESC, name "
                    "LIMIT 3", (reason,))]
                for reason, _ in refused[:10]}
            last_ok = conn.execute(
                "SELECT max(finished_at) FROM polls WHERE ok = 1").fetchone()[0]
            oldest = conn.execute(
                "SELECT min(dispatched_at) FROM datasets WHERE state = 'dispatched'").fetchone()
            by_exec = dict(conn.execute(
                "SELECT executor, count(*) FROM datasets WHERE state = 'dispatched' "
                "GROUP BY executor").fetchall())
            fails = conn.execute(
                "SELECT obs_id, error, failed_at, attempts FROM datasets WHERE state = 'failed' "
                "ORDER BY failed_at DESC LIMIT ?", (failures,)).fetchall()
            rate = "SELECT coalesce(sum(n), 0) FROM done_per_minute WHERE minute >= ?"
            hour = conn.execute(rate, (int((now - 3600) // 60),)).fetchone()[0]
            day = conn.execute(rate, (int((now - 86400) // 60),)).fetchone()[0]
            rejected = conn.execute("SELECT count(*) FROM rejects").fetchone()[0]
            waiting = conn.execute("SELECT count(*) FROM datasets WHERE state = 'new' "
                                   "AND waiting_since IS NOT NULL").fetchone()[0]
            withdrawn = conn.execute("SELECT count(*) FROM datasets "
                                     "WHERE withdrawn_at IS NOT NULL").fetchone()[0]
            freshness = dict(conn.execute(
                "SELECT key, value FROM meta WHERE key GLOB 'refresh_*' "
                "OR key GLOB 'notify_*' OR key = 'recatalogued'").fetchall())
            gone = conn.execute(
                "SELECT obs_id, input_key, withdrawn_at FROM datasets "
                "WHERE withdrawn_at IS NOT NULL ORDER BY withdrawn_at DESC LIMIT ?",
                (failures,)).fetchall()
        return Snapshot(
            path=str(self.path), schema_version=SCHEMA_VERSION, counts=counts,
            cursor_mjd=float(cur[0]) if cur else None, last_poll=_poll_dict(poll),
            last_ok_poll_at=last_ok, in_flight=counts["dispatched"],
            last_resweep=_poll_dict(resweep),
            oldest_dispatched_at=oldest[0] if oldest else None,
            recent_failures=[{"obs_id": o, "reason": e, "at": t, "attempts": a}
                             for o, e, t, a in fails],
            done_last_hour=int(hour), done_last_day=int(day), rejected=int(rejected),
            taken_at=now, by_executor={str(k): int(v) for k, v in by_exec.items()},
            waiting=int(waiting), withdrawn=int(withdrawn),
            refused_by_reason={str(r): int(n) for r, n in refused},
            refused_examples=examples,
            freshness={str(k): str(v) for k, v in freshness.items()},
            withdrawn_recent=[{"obs_id": o, "input_key": k, "at": t} for o, k, t in gone])

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: 'ok' for a sound database."""
        return str(self._conn().execute("PRAGMA integrity_check").fetchone()[0])


_POLL_KEYS = ("id", "kind", "started_at", "finished_at", "window_lo_mjd", "window_hi_mjd", "ok",
              "error", "windows", "observations", "products", "seen", "new", "rejected",
              "excluded", "listed", "recorded")
_POLL_COLUMNS = ", ".join(_POLL_KEYS)


def _poll_dict(row: Sequence[Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    poll = dict(zip(_POLL_KEYS, row, strict=True))
    if poll["ok"] is not None:
        poll["ok"] = bool(poll["ok"])
    return poll


def _changed(conn: sqlite3.Connection, items: Iterable[Changed], now: float
             ) -> list[Transition]:
    out: list[Transition] = []
    for c in items:
        reason = f"input changed in the archive (ETag {c.etag} -> {c.new_etag})"
        row = conn.execute(
            "UPDATE datasets SET state = 'new', generation = generation + 1, "
            "min_dispatch = dispatches + 1, attempts = 0, not_before = NULL, "
            "waiting_since = NULL, withdrawn_at = NULL, checked_at = ?, error = ?, "
            "updated_at = ? WHERE obs_id = ? AND state = 'done' AND input_etag IS ? "
            "RETURNING obs_id, attempts",
            (now, reason, now, c.obs_id, c.etag)).fetchone()
        if row:
            out.append(Transition(row[0], "new", row[1], reason))
    return out


def _checked(conn: sqlite3.Connection, items: Iterable[Checked], now: float) -> int:
    n = 0
    for c in items:
        row = conn.execute(
            "UPDATE datasets SET checked_at = ?, withdrawn_at = NULL, "
            "input_etag = coalesce(input_etag, ?), input_size = coalesce(input_size, ?) "
            "WHERE obs_id = ? AND state = 'done' RETURNING generation",
            (now, c.etag, c.size, c.obs_id)).fetchone()
        if row:
            n += 1
            if c.etag is not None:  # the history learns it too
                conn.execute("UPDATE catalogs SET input_etag = coalesce(input_etag, ?), "
                             "input_size = coalesce(input_size, ?) "
                             "WHERE obs_id = ? AND generation = ?",
                             (c.etag, c.size, c.obs_id, row[0]))
    return n


def _withdrawn(conn: sqlite3.Connection, obs_ids: Iterable[str], now: float) -> int:
    return sum(conn.execute(
        "UPDATE datasets SET checked_at = ?, withdrawn_at = coalesce(withdrawn_at, ?) "
        "WHERE obs_id = ? AND state = 'done'", (now, now, o)).rowcount for o in obs_ids)


def _set_meta(conn: sqlite3.Connection, values: dict[str, str],
              add: dict[str, float] | None = None) -> None:
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", values.items())
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
        "SET value = CAST(meta.value AS REAL) + CAST(excluded.value AS REAL)",
        ((k, repr(float(v))) for k, v in (add or {}).items()))


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
