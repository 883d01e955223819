"""The SQLite schema, its version, and the migrations that reach it from any older version.

The version lives in ``PRAGMA user_version``. A migration is a list of SQL statements run in
one transaction together with the version bump, so a crash mid-migration leaves the old
schema intact. New versions are appended to ``MIGRATIONS``; existing entries never change.
"""

from __future__ import annotations

import sqlite3

STATES = ("new", "dispatched", "done", "failed")

# Timestamps are Unix seconds (REAL): ages and rates are plain arithmetic in SQL, and
# status renders them as ISO 8601 UTC.
_V1 = [
    f"""
    CREATE TABLE datasets (
        obs_id        TEXT PRIMARY KEY,
        input_key     TEXT NOT NULL,
        release_mjd   REAL,
        mast_obs_id   TEXT,
        state         TEXT NOT NULL DEFAULT 'new'
                      CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
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
        poll_id       INTEGER
    )
    """,
    # Partial indexes keep the hot queries proportional to what is in flight or queued,
    # not to the whole archive already done.
    "CREATE INDEX datasets_new ON datasets (release_mjd, obs_id) WHERE state = 'new'",
    "CREATE INDEX datasets_in_flight ON datasets (dispatched_at) WHERE state = 'dispatched'",
    "CREATE INDEX datasets_failed ON datasets (failed_at) WHERE state = 'failed'",
    """
    CREATE TABLE state_counts (
        state TEXT PRIMARY KEY,
        n     INTEGER NOT NULL
    )
    """,
    *[f"INSERT INTO state_counts (state, n) VALUES ('{s}', 0)" for s in STATES],
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
    # Finished datasets per minute, kept by a trigger: status's throughput in O(1), however
    # many datasets finished in the last day.
    """
    CREATE TABLE done_per_minute (
        minute INTEGER PRIMARY KEY,
        n      INTEGER NOT NULL
    )
    """,
    """
    CREATE TRIGGER datasets_done_rate AFTER UPDATE OF state ON datasets
    WHEN NEW.state = 'done' AND OLD.state <> 'done' BEGIN
        INSERT INTO done_per_minute (minute, n) VALUES (CAST(NEW.done_at / 60 AS INTEGER), 1)
        ON CONFLICT (minute) DO UPDATE SET n = n + 1;
    END
    """,
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

MIGRATIONS: list[list[str]] = [_V1]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The database was written by a newer mastmirror, or is not a mastmirror database."""


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the database (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to ``target``, one transaction per version; return the old version."""
    current = user_version(conn)
    if current > SCHEMA_VERSION:
        raise SchemaError(f"database schema version {current} is newer than this mastmirror "
                          f"understands ({SCHEMA_VERSION}); upgrade mastmirror")
    if current == 0 and _has_foreign_tables(conn):
        raise SchemaError("the file is an SQLite database but not a mastmirror one "
                          "(it has tables and no mastmirror schema version)")
    start = current
    while current < target:
        statements = MIGRATIONS[current]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in statements:
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {current + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        current += 1
    return start


def _has_foreign_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    return bool(row[0])
