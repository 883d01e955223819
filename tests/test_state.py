"""The state machine, tested directly on real SQLite files (no mocks)."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from state.schema import SCHEMA_VERSION, STATES, SchemaError
from state.store import Discovered, Finished, Rejected, Sent, StateStore


def _exposures(n: int, start: int = 0, release: float = 60000.0) -> list[Discovered]:
    return [Discovered(f"iabc{i:05d}", f"hst/public/iabc/iabc{i:05d}/iabc{i:05d}_flt.fits",
                       release + i / 1000, f"IABC{i:05d}") for i in range(start, start + n)]


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def _record(store: StateStore, rows: list[Discovered], hi: float = 60100.0) -> int:
    poll = store.begin_poll("poll", 60000.0)
    new = store.record_window(poll, hi, rows, observations=len(rows), products=len(rows))
    store.finish_poll(poll, ok=True)
    return new


def _true_counts(store: StateStore) -> dict[str, int]:
    rows = store.db.execute("SELECT state, count(*) FROM datasets GROUP BY state").fetchall()
    out = dict.fromkeys(STATES, 0)
    out.update(dict(rows))
    out["total"] = sum(out.values())
    return out


def test_new_database_is_at_current_schema_in_wal_mode(tmp_path: Path) -> None:
    with StateStore(tmp_path / "a.db") as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert set(s.db.table_names()) >= {"datasets", "polls", "meta", "rejects",
                                           "state_counts"}
    # Reopening migrates nothing and loses nothing.
    with StateStore(tmp_path / "a.db") as s:
        assert s.counts()["total"] == 0


def test_newer_schema_and_foreign_database_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    StateStore(newer).close()
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="newer"):
        StateStore(newer)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(SchemaError, match="not a mastmirror"):
        StateStore(foreign)


def test_read_only_open_never_creates(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no state database"):
        StateStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_record_window_is_idempotent_and_moves_cursor_forward_only(store: StateStore) -> None:
    assert store.cursor() is None
    assert _record(store, _exposures(10), hi=60010.0) == 10
    assert _record(store, _exposures(15), hi=60020.0) == 5  # 10 seen again, 5 new
    assert store.counts() == {"new": 15, "dispatched": 0, "done": 0, "failed": 0, "skipped": 0,
                              "total": 15}
    assert store.cursor() == 60020.0
    _record(store, [], hi=60015.0)  # an overlap window never moves the cursor back
    assert store.cursor() == 60020.0


def test_rejects_are_recorded_once(store: StateStore) -> None:
    poll = store.begin_poll("poll", 1.0)
    for _ in range(2):
        store.record_window(poll, 2.0, [], observations=1, products=1,
                            rejected=[Rejected("../x_flt.fits", "path components")])
    assert store.db.execute("SELECT count(*) FROM rejects").fetchone()[0] == 1
    assert store.snapshot().rejected == 1


def test_claim_takes_oldest_release_first_and_counts_attempts(store: StateStore) -> None:
    _record(store, _exposures(5))
    rows = store.claim_new(3, executor="local", run_id="r1", now=100.0)
    assert [r.obs_id for r in rows] == ["iabc00000", "iabc00001", "iabc00002"]
    assert all(r.state == "dispatched" and r.attempts == 1 and r.dispatches == 1 for r in rows)
    assert store.claim_new(0, executor="local", run_id="r1") == []
    assert len(store.claim_new(10, executor="local", run_id="r1")) == 2
    assert store.claim_new(10, executor="local", run_id="r1") == []
    assert store.count_in_flight() == 5


def test_done_happens_exactly_once(store: StateStore) -> None:
    _record(store, _exposures(2))
    store.claim_new(2, executor="local", run_id="r")
    f = Finished("iabc00000", "k_sep.fits", sources=12, duration_ms=300)
    assert store.mark_done([f]) == ["iabc00000"]
    assert store.mark_done([f]) == []  # a second sighting of the same catalog changes nothing
    row = store.get("iabc00000")
    assert row["state"] == "done" and row["sources"] == 12 and row["catalog_key"] == "k_sep.fits"
    assert store.counts()["done"] == 1


def test_failure_from_a_stale_dispatch_is_ignored(store: StateStore) -> None:
    _record(store, _exposures(1))
    (row,) = store.claim_new(1, executor="local", run_id="r")
    assert store.fail_or_requeue([("iabc00000", row.dispatches + 1, "x", False)],
                                 max_attempts=3) == []
    assert store.get("iabc00000")["state"] == "dispatched"


def test_retryable_failure_requeues_with_backoff_then_fails(store: StateStore) -> None:
    _record(store, _exposures(1))
    t = 1000.0
    for attempt in (1, 2):
        (row,) = store.claim_new(1, executor="lambda", run_id="r", now=t)
        assert row.attempts == attempt
        (tr,) = store.fail_or_requeue([(row.obs_id, row.dispatches, "SlowDown", True)],
                                      max_attempts=3, backoff_s=10.0, now=t)
        assert tr.state == "new"
        wait = 10.0 * 2 ** (attempt - 1)
        assert store.claim_new(1, executor="lambda", run_id="r", now=t + wait - 1) == []
        t += wait
    (row,) = store.claim_new(1, executor="lambda", run_id="r", now=t)
    (tr,) = store.fail_or_requeue([(row.obs_id, row.dispatches, "SlowDown", True)],
                                  max_attempts=3, backoff_s=10.0, now=t)
    assert tr.state == "failed" and tr.attempts == 3
    got = store.get(row.obs_id)
    assert got["state"] == "failed" and got["error"] == "SlowDown" and got["failed_at"] == t


def test_permanent_failure_fails_at_once(store: StateStore) -> None:
    _record(store, _exposures(1))
    (row,) = store.claim_new(1, executor="local", run_id="r")
    (tr,) = store.fail_or_requeue([(row.obs_id, row.dispatches, "no SCI extension", False)],
                                  max_attempts=5)
    assert tr.state == "failed" and store.get(row.obs_id)["error"] == "no SCI extension"


def test_timeout_dispatches_again_then_fails(store: StateStore) -> None:
    _record(store, _exposures(1))
    now = 0.0
    for attempt in (1, 2):
        store.claim_new(1, executor="lambda", run_id="r", now=now)
        assert store.expire(timeout_s=60, max_attempts=2, now=now + 59) == []
        (tr,) = store.expire(timeout_s=60, max_attempts=2, now=now + 61)
        assert tr.state == ("new" if attempt == 1 else "failed")
        now += 61
    row = store.get("iabc00000")
    assert row["state"] == "failed"
    assert row["error"] == "timed out: no result within 60 s after 2 attempt(s)"


def test_in_flight_pages_visit_each_dispatch_once_while_rows_change(store: StateStore) -> None:
    _record(store, _exposures(10))
    for t in (1.0, 2.0):  # two claims, five datasets sharing each dispatched_at
        store.claim_new(5, executor="lambda", run_id="r", now=t)
    seen = []
    for page in store.in_flight_pages(3):
        assert len(page) <= 3
        seen += [r.obs_id for r in page]
        # Settled between pages: neither skipped nor read twice.
        store.mark_done([Finished(r.obs_id, "k") for r in page])
    assert seen == [f"iabc{i:05d}" for i in range(10)]
    assert store.count_in_flight() == 0 and list(store.in_flight_pages(3)) == []


def test_a_mass_timeout_is_settled_in_bounded_steps(store: StateStore) -> None:
    _record(store, _exposures(7))
    store.claim_new(7, executor="lambda", run_id="r", now=0.0)
    with store.transaction() as conn:  # two of them on their last attempt
        conn.execute("UPDATE datasets SET attempts = 3 WHERE obs_id IN ('iabc00001', "
                     "'iabc00005')")
    steps = []
    while out := store.expire(timeout_s=60, max_attempts=3, now=100.0, limit=3):
        steps.append(out)
    assert all(len(s) <= 6 for s in steps) and len(steps) >= 2
    settled = {t.obs_id: t.state for s in steps for t in s}
    assert settled == {f"iabc{i:05d}": "failed" if i in (1, 5) else "new" for i in range(7)}


def test_orphans_of_a_previous_local_run_are_requeued_without_counting(store: StateStore) -> None:
    _record(store, _exposures(3))
    store.claim_new(2, executor="local", run_id="old")
    store.claim_new(1, executor="lambda", run_id="old")
    back = store.reclaim_orphans(executor="local", run_id="new")
    assert sorted(t.obs_id for t in back) == ["iabc00000", "iabc00001"]
    assert all(t.attempts == 0 for t in back)
    assert store.get("iabc00002")["state"] == "dispatched"  # Lambda runs outlive the daemon
    assert store.get("iabc00000")["dispatches"] == 1  # the event number still only grows


def test_unclaim_returns_undelivered_events_without_counting(store: StateStore) -> None:
    _record(store, _exposures(1))
    (row,) = store.claim_new(1, executor="lambda", run_id="r")
    (tr,) = store.unclaim([(row.obs_id, row.dispatches)], "throttled")
    assert tr.state == "new" and tr.attempts == 0
    assert store.get(row.obs_id)["dispatches"] == 1


def test_retry_resets_the_budget_and_keeps_dispatch_numbers_growing(store: StateStore) -> None:
    _record(store, _exposures(2))
    for row in store.claim_new(2, executor="local", run_id="r"):
        store.fail_or_requeue([(row.obs_id, row.dispatches, "bad", False)], max_attempts=1)
    assert store.retry_failed(["iabc00001", "nope"]) == ["iabc00001"]
    assert store.retry_failed() == ["iabc00000"]
    (row, _) = store.claim_new(2, executor="local", run_id="r")
    assert row.attempts == 1 and row.dispatches == 2


def test_request_ids_only_land_on_the_current_dispatch(store: StateStore) -> None:
    _record(store, _exposures(1))
    (row,) = store.claim_new(1, executor="lambda", run_id="r")
    store.set_request_ids([Sent(row.obs_id, "old-id", row.dispatches - 1)])
    assert store.get(row.obs_id)["request_id"] is None
    store.set_request_ids([Sent(row.obs_id, "req-1", row.dispatches)])
    assert store.get(row.obs_id)["request_id"] == "req-1"


def test_a_failed_transaction_leaves_nothing_behind(store: StateStore) -> None:
    _record(store, _exposures(3))
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("UPDATE datasets SET state = 'done' WHERE obs_id = 'iabc00000'")
        raise RuntimeError("crash in the middle")
    assert store.get("iabc00000")["state"] == "new"
    assert store.counts() == _true_counts(store)


def test_counts_kept_by_triggers_match_the_rows_after_random_work(store: StateStore) -> None:
    rnd = random.Random(7)
    _record(store, _exposures(200))
    now = 0.0
    for _ in range(300):
        now += rnd.uniform(0, 30)
        op = rnd.random()
        if op < 0.3:
            store.claim_new(rnd.randint(0, 20), executor="local", run_id="r", now=now)
        elif op < 0.5:
            rows = store.in_flight()
            store.mark_done([Finished(r.obs_id, "k") for r in rows if rnd.random() < 0.5],
                            now=now)
        elif op < 0.7:
            rows = store.in_flight()
            store.fail_or_requeue([(r.obs_id, r.dispatches, "e", rnd.random() < 0.5)
                                   for r in rows if rnd.random() < 0.3], max_attempts=3,
                                  now=now)
        elif op < 0.85:
            store.expire(timeout_s=100, max_attempts=3, now=now)
        elif op < 0.95:
            store.retry_failed(now=now)
        else:
            store.reclaim_orphans(executor="local", run_id=f"x{now}", now=now)
        assert store.counts() == _true_counts(store)
    assert store.integrity_check() == "ok"


def test_status_snapshot_is_consistent_while_another_thread_writes(tmp_path: Path) -> None:
    writer = StateStore(tmp_path / "s.db")
    _record(writer, _exposures(2000))
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            rows = writer.claim_new(50, executor="local", run_id="r")
            writer.mark_done([Finished(r.obs_id, "k") for r in rows])
            if not rows:
                break

    t = threading.Thread(target=churn)
    t.start()
    reader = StateStore(tmp_path / "s.db", create=False)
    try:
        for _ in range(50):
            snap = reader.snapshot()
            assert sum(snap.counts[s] for s in ("new", "dispatched", "done", "failed")) == 2000
            assert snap.counts["total"] == 2000
    finally:
        stop.set()
        t.join()
        reader.close()
        writer.close()


def test_a_killed_writer_leaves_a_sound_database(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    StateStore(db).close()
    script = textwrap.dedent(f"""
        import os, signal
        from state.store import StateStore, Discovered
        s = StateStore({str(db)!r})
        poll = s.begin_poll("backfill", 1.0)
        rows = [Discovered(f"i{{i:08d}}", f"k{{i}}", 1.0, "m") for i in range(200000)]
        def gen():
            for i, r in enumerate(rows):
                if i == 150000:
                    os.kill(os.getpid(), signal.SIGKILL)  # dies inside the transaction
                yield r
        s.record_window(poll, 2.0, list(rows[:10]), observations=1, products=1)
        s.record_window(poll, 3.0, gen(), observations=1, products=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with StateStore(db) as s:
        assert s.integrity_check() == "ok"
        assert s.counts()["total"] == 10  # the first window, whole; nothing of the second
        assert s.cursor() == 2.0
        assert s.counts() == _true_counts(s)


def test_a_read_only_store_reads_and_never_writes(tmp_path: Path) -> None:
    with StateStore(tmp_path / "r.db") as s:
        _record(s, _exposures(3))
    with StateStore(tmp_path / "r.db", readonly=True) as ro:
        assert ro.counts()["new"] == 3 and ro.snapshot().counts["total"] == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            ro.claim_new(1, executor="local", run_id="r")
    with pytest.raises(FileNotFoundError):
        StateStore(tmp_path / "none.db", readonly=True)
    assert not (tmp_path / "none.db").exists()


def test_throughput_counts_by_the_minute(store: StateStore) -> None:
    _record(store, _exposures(10))
    now = 1_000_000.0
    rows = store.claim_new(10, executor="local", run_id="r", now=now - 7300)
    store.mark_done([Finished(r.obs_id, "k") for r in rows[:4]], now=now - 7200)  # 2 h ago
    store.mark_done([Finished(r.obs_id, "k") for r in rows[4:7]], now=now - 60)
    store.mark_done([Finished(r.obs_id, "k") for r in rows[4:7]], now=now)  # no double count
    snap = store.snapshot(now=now)
    assert (snap.done_last_hour, snap.done_last_day) == (3, 7)
    assert store.retry_failed() == [] and store.snapshot(now=now).done_last_day == 7

