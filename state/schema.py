"""The SQLite schema, its version, and the migrations that reach it from any older version.

The version lives in ``PRAGMA user_version``. A migration is a list of SQL statements run in
one transaction together with the version bump, so a crash mid-migration leaves the old
schema intact. New versions are appended to ``MIGRATIONS``; existing entries never change.
"""

from __future__ import annotations

import sqlite3

# The states of schema version 1; version 2 added the terminal 'skipped'.
_V1_STATES = ("new", "dispatched", "done", "failed")
STATES = (*_V1_STATES, "skipped")

# Timestamps are Unix seconds (REAL): ages and rates are plain arithmetic in SQL, and
# status renders them as ISO 8601 UTC.
_V1_DATASET_COLUMNS = """
        obs_id        TEXT PRIMARY KEY,
        input_key     TEXT NOT NULL,
        release_mjd   REAL,
        mast_obs_id   TEXT,
        state         TEXT NOT NULL DEFAULT 'new'
                      CHECK (state IN ({states})),
        attempts      INTEGER NOT NULL DEFAULT 0,
        dispatches    INTEGER NOT NULL DEFAULT 0,
        discovered_at REAL NOT NULL,
        not_before    REAL,
        dispatched_at REAL,
        done_at       REAL,
        failed_at     REAL,
        updated_at    REAL NOT NULL,
        executor      TEXT,
        run_id        TEXT,
        request_id    TEXT,
        error         TEXT,
        catalog_key   TEXT,
        sources       INTEGER,
        duration_ms   INTEGER,
        bytes_read    INTEGER,
        peak_rss_mb   REAL,
        poll_id       INTEGER"""
_V1_COLUMN_NAMES = ("obs_id, input_key, release_mjd, mast_obs_id, state, attempts, dispatches, "
                    "discovered_at, not_before, dispatched_at, done_at, failed_at, updated_at, "
                    "executor, run_id, request_id, error, catalog_key, sources, duration_ms, "
                    "bytes_read, peak_rss_mb, poll_id")


def _states_sql(states: tuple[str, ...]) -> str:
    return ", ".join(repr(s) for s in states)


# The indexes and triggers of the datasets table (version 2 rebuilds the table and makes
# them again, unchanged).
_DATASET_INDEXES = [
    # Partial indexes keep the hot queries proportional to what is in flight or queued,
    # not to the whole archive already done.
    "CREATE INDEX datasets_new ON datasets (release_mjd, obs_id) WHERE state = 'new'",
    "CREATE INDEX datasets_in_flight ON datasets (dispatched_at) WHERE state = 'dispatched'",
    "CREATE INDEX datasets_failed ON datasets (failed_at) WHERE state = 'failed'",
]
_DATASET_TRIGGERS = [
    # Counts kept by triggers make `status` O(1) on a database of any size.
    """
    CREATE TRIGGER datasets_count_insert AFTER INSERT ON datasets BEGIN
        UPDATE state_counts SET n = n + 1 WHERE state = NEW.state;
    END
    """,
    """
    CREATE TRIGGER datasets_count_delete AFTER DELETE ON datasets BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
    END
    """,
    """
    CREATE TRIGGER datasets_count_update AFTER UPDATE OF state ON datasets
    WHEN OLD.state <> NEW.state BEGIN
        UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;
        UPDATE state_counts SET n = n + 1 WHERE state = NEW.state;
    END
    """,
    """
    CREATE TRIGGER datasets_done_rate AFTER UPDATE OF state ON datasets
    WHEN NEW.state = 'done' AND OLD.state <> 'done' BEGIN
        INSERT INTO done_per_minute (minute, n) VALUES (CAST(NEW.done_at / 60 AS INTEGER), 1)
        ON CONFLICT (minute) DO UPDATE SET n = n + 1;
    END
    """,
]

_V1 = [
    f"CREATE TABLE datasets ({_V1_DATASET_COLUMNS.format(states=_states_sql(_V1_STATES))}\n)",
    *_DATASET_INDEXES,
    """
    CREATE TABLE state_counts (
        state TEXT PRIMARY KEY,
        n     INTEGER NOT NULL
    )
    """,
    *[f"INSERT INTO state_counts (state, n) VALUES ('{s}', 0)" for s in _V1_STATES],
    # Finished datasets per minute, kept by a trigger: status's throughput in O(1), however
    # many datasets finished in the last day.
    """
    CREATE TABLE done_per_minute (
        minute INTEGER PRIMARY KEY,
        n      INTEGER NOT NULL
    )
    """,
    *_DATASET_TRIGGERS,
    """
    CREATE TABLE polls (
        id            INTEGER PRIMARY KEY,
        kind          TEXT NOT NULL,
        started_at    REAL NOT NULL,
        finished_at   REAL,
        window_lo_mjd REAL NOT NULL,
        window_hi_mjd REAL,
        ok            INTEGER,
        error         TEXT,
        windows       INTEGER NOT NULL DEFAULT 0,
        observations  INTEGER NOT NULL DEFAULT 0,
        products      INTEGER NOT NULL DEFAULT 0,
        seen          INTEGER NOT NULL DEFAULT 0,
        new           INTEGER NOT NULL DEFAULT 0,
        rejected      INTEGER NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE TABLE rejects (
        name      TEXT PRIMARY KEY,
        reason    TEXT NOT NULL,
        first_at  REAL NOT NULL,
        poll_id   INTEGER
    )
    """,
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
]


# Version 2: the real archive (issue 10) and a mirror that stays true (issue 11).
# SQLite cannot change a CHECK constraint in place, so the table is rebuilt (SQLite's own
# recipe: new table, copy, drop, rename) in the migration's one transaction.
#   skipped        a terminal state: the input is not something mastmirror catalogues
#   generation     1 for the first catalog, +1 each time a changed input is re-catalogued
#   min_dispatch   the first dispatch of this generation: a catalog written by an earlier
#                  dispatch is the previous generation's, still in place, not this one's
#   input_etag/input_size  of the input the current catalog was made from
#   waiting_since  a new dataset held because its input is not in the archive bucket yet
#   skip_reason    why it was skipped
#   withdrawn_at   the input is gone from the archive; the catalog is kept
#   checked_at     when refresh last compared the input with the archive
_V2_NEW_COLUMNS = """,
        generation    INTEGER NOT NULL DEFAULT 1,
        min_dispatch  INTEGER NOT NULL DEFAULT 1,
        input_etag    TEXT,
        input_size    INTEGER,
        waiting_since REAL,
        skipped_at    REAL,
        skip_reason   TEXT,
        withdrawn_at  REAL,
        checked_at    REAL"""
_V2 = [
    f"CREATE TABLE datasets_v2 ({_V1_DATASET_COLUMNS.format(states=_states_sql(STATES))}"
    f"{_V2_NEW_COLUMNS}\n)",
    f"INSERT INTO datasets_v2 ({_V1_COLUMN_NAMES}) SELECT {_V1_COLUMN_NAMES} FROM datasets",
    "DROP TABLE datasets",  # its indexes and triggers go with it
    "ALTER TABLE datasets_v2 RENAME TO datasets",
    *_DATASET_INDEXES,
    *_DATASET_TRIGGERS,
    "INSERT INTO state_counts (state, n) VALUES ('skipped', 0)",
    # Held datasets, in the order they become due; withdrawn inputs, for status.
    "CREATE INDEX datasets_waiting ON datasets (not_before) "
    "WHERE state = 'new' AND waiting_since IS NOT NULL",
    "CREATE INDEX datasets_withdrawn ON datasets (withdrawn_at) WHERE withdrawn_at IS NOT NULL",
    # Every catalog ever made, one row per generation: the mirror's history.
    """
    CREATE TABLE catalogs (
        obs_id      TEXT NOT NULL,
        generation  INTEGER NOT NULL,
        catalog_key TEXT NOT NULL,
        input_etag  TEXT,
        input_size  INTEGER,
        sources     INTEGER,
        attempt     INTEGER,
        made_at     REAL NOT NULL,
        PRIMARY KEY (obs_id, generation)
    ) WITHOUT ROWID
    """,
    "INSERT INTO catalogs (obs_id, generation, catalog_key, sources, attempt, made_at) "
    "SELECT obs_id, 1, catalog_key, sources, dispatches, done_at FROM datasets "
    "WHERE state = 'done'",
]

# Version 3: the real archive's listings (issue 10).
#   polls.excluded  observations left out by [mast] exclude_filters (grisms), per poll
#   polls.listed    a resweep: the exposures MAST lists with a release in its range
#   polls.recorded  a resweep: the datasets the database holds in that range, afterwards
#   datasets_release  counts by release date (a resweep compares its range with MAST's)
_V3 = [
    "ALTER TABLE polls ADD COLUMN excluded INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE polls ADD COLUMN listed INTEGER",
    "ALTER TABLE polls ADD COLUMN recorded INTEGER",
    "CREATE INDEX datasets_release ON datasets (release_mjd)",
    "CREATE INDEX polls_kind ON polls (kind, id)",
    # status counts the refused names by reason and shows the latest of each
    "CREATE INDEX rejects_reason ON rejects (reason, first_at)",
]

MIGRATIONS: list[list[str]] = [_V1, _V2, _V3]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The database was written by a newer mastmirror, or is not a mastmirror database."""


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to ``target`` in one transaction; return the old version.

    One transaction for every pending version: a crash leaves the old schema intact, and a
    reader (``status`` while a new daemon creates its database) sees the old schema or the
    target, never a version in between.
    """
    conn.execute("BEGIN IMMEDIATE")  # the version is read under the write lock
    try:
        current = start = user_version(conn)
        if current > SCHEMA_VERSION:
            raise SchemaError(f"database schema version {current} is newer than this "
                              f"mastmirror understands ({SCHEMA_VERSION}); upgrade mastmirror")
        if current == 0 and _has_foreign_tables(conn):
            raise SchemaError("the file is an SQLite database but not a mastmirror one "
                              "(it has tables and no mastmirror schema version)")
        while current < target:
            for sql in MIGRATIONS[current]:
                conn.execute(sql)
            current += 1
        conn.execute(f"PRAGMA user_version = {current}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return start


def _has_foreign_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    return bool(row[0])
