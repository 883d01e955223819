"""The lifecycle schema version 2 added, tested directly on real SQLite files (no mocks):
skipped inputs, inputs not yet in the archive (held, not attempts), re-cataloguing a
changed input as its next generation, withdrawn inputs, and the migration from version 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from state.schema import SCHEMA_VERSION, migrate
from state.store import (
    Changed,
    Claim,
    Discovered,
    Failure,
    Finished,
    Rejected,
    Skip,
    StateStore,
)

MJD_UNIX0 = 40587.0  # MJD of 1970-01-01


def _add(store: StateStore, n: int, *, release_unix: float = 0.0, now: float = 0.0) -> None:
    mjd = MJD_UNIX0 + release_unix / 86400.0
    rows = [Discovered(f"iabc{i:05d}", f"hst/public/iabc/iabc{i:05d}/iabc{i:05d}_flt.fits",
                       mjd, f"iabc{i:05d}") for i in range(n)]
    poll = store.begin_poll("poll", mjd, now=now)
    store.record_window(poll, mjd + 1, rows, observations=n, products=n, now=now)
    store.finish_poll(poll, ok=True, now=now)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def _catalogue(store: StateStore, obs_id: str, etag: str, *, now: float = 0.0) -> int:
    """Dispatch one dataset (if not in flight yet) and record its catalog; returns the
    dispatch number."""
    store.claim_new(100, executor="lambda", run_id="r", now=now)
    dispatch = store.get(obs_id)["dispatches"]
    assert store.mark_done([Finished(obs_id, "k_sep.fits", sources=5, attempt=dispatch,
                                     input_etag=etag, input_size=100)], now=now) == [obs_id]
    return int(dispatch)


def test_skipped_is_terminal_and_not_a_failure(store: StateStore) -> None:
    _add(store, 2)
    rows = store.claim_new(2, executor="local", run_id="r")
    (t,) = store.mark_skipped([Skip(rows[0].obs_id, rows[0].dispatches, "grism filter G141")])
    assert (t.state, t.reason) == ("skipped", "grism filter G141")
    got = store.get(rows[0].obs_id)
    assert got["state"] == "skipped" and got["skip_reason"] == "grism filter G141"
    assert got["error"] is None
    c = store.counts()
    assert (c["skipped"], c["failed"], c["dispatched"]) == (1, 0, 1)
    assert store.retry_failed() == []  # not failed, so retry leaves it alone
    assert store.claim_new(10, executor="local", run_id="r") == []
    # A skip marker from a dispatch that is not this one's changes nothing.
    assert store.mark_skipped([Skip(rows[1].obs_id, rows[1].dispatches + 1, "x")]) == []


def test_missing_input_is_held_not_attempted_then_failed_after_the_wait(
        store: StateStore) -> None:
    _add(store, 1, release_unix=1000.0, now=1000.0)
    t = 1000.0
    delays = []
    while True:
        rows = store.claim_new(1, executor="lambda", run_id="r", now=t)
        if not rows:  # held: look again when due
            t = store.get("iabc00000")["not_before"]
            continue
        (row,) = rows
        assert row.attempts == 1  # a wait never used up an attempt
        (tr,) = store.hold_missing([Failure(row.obs_id, row.dispatches, "input object not found",
                                            True)], wait_s=4 * 3600.0, now=t)
        if tr.state == "failed":
            break
        got = store.get(row.obs_id)
        assert got["state"] == "new" and got["waiting_since"] == 1000.0
        assert store.snapshot(now=t).waiting == 1
        delays.append(got["not_before"] - t)
    # 5 min, then as long again as it has waited (doubling), capped at an hour.
    assert delays[:5] == [300.0, 300.0, 600.0, 1200.0, 2400.0]
    assert max(delays) == 3600.0
    assert t >= 1000.0 + 4 * 3600.0
    got = store.get("iabc00000")
    assert got["state"] == "failed" and got["attempts"] == 0
    assert got["error"] == "not in the archive after 4 h: input object not found"
    assert store.snapshot(now=t).waiting == 0
    # retry gives it a fresh wait.
    assert store.retry_failed() == ["iabc00000"]
    assert store.get("iabc00000")["waiting_since"] is None


def test_the_wait_runs_from_discovery_when_mast_lists_late(store: StateStore) -> None:
    # Released a year before it was listed: the wait starts when it was discovered.
    _add(store, 1, release_unix=0.0, now=365 * 86400.0)
    t = 365 * 86400.0 + 60
    (row,) = store.claim_new(1, executor="lambda", run_id="r", now=t)
    (tr,) = store.hold_missing([Failure(row.obs_id, row.dispatches, "not found", True)],
                               wait_s=3600.0, now=t)
    assert tr.state == "new"
    (row,) = store.claim_new(1, executor="lambda", run_id="r", now=t + 4000)
    (tr,) = store.hold_missing([Failure(row.obs_id, row.dispatches, "not found", True)],
                               wait_s=3600.0, now=t + 4000)
    assert tr.state == "failed"


def test_a_held_dataset_that_appears_is_done_and_no_longer_waiting(store: StateStore) -> None:
    _add(store, 1)
    (row,) = store.claim_new(1, executor="lambda", run_id="r", now=10.0)
    store.hold_missing([Failure(row.obs_id, row.dispatches, "not found", True)],
                       wait_s=1e9, now=10.0)
    (row,) = store.claim_new(1, executor="lambda", run_id="r", now=1000.0)
    store.mark_done([Finished(row.obs_id, "k", attempt=row.dispatches)], now=1000.0)
    got = store.get(row.obs_id)
    assert got["state"] == "done" and got["waiting_since"] is None and got["attempts"] == 1


def test_a_changed_input_is_the_next_generation_once(store: StateStore) -> None:
    _add(store, 2)
    first = _catalogue(store, "iabc00000", '"e1"')
    _catalogue(store, "iabc00001", '"x1"')
    got = store.get("iabc00000")
    assert (got["generation"], got["input_etag"], got["input_size"]) == (1, '"e1"', 100)

    change = Changed("iabc00000", '"e1"', '"e2"', 120)
    (t,) = store.mark_changed([change], now=5.0)
    assert t.state == "new" and "e1" in t.reason and "e2" in t.reason
    # Seen again (a notification after a refresh): still one new generation.
    assert store.mark_changed([change], now=6.0) == []
    got = store.get("iabc00000")
    assert (got["state"], got["generation"], got["attempts"]) == ("new", 2, 0)
    assert got["min_dispatch"] == first + 1
    assert store.get("iabc00001")["state"] == "done"  # untouched

    (row,) = store.claim_new(1, executor="lambda", run_id="r", now=10.0)
    assert (row.generation, row.min_dispatch) == (2, first + 1)
    # The previous generation's catalog, still at the key, is not this generation's result.
    old = Finished("iabc00000", "k_sep.fits", attempt=first, input_etag='"e1"')
    assert store.mark_done([old], now=11.0) == []
    assert store.mark_done([Finished("iabc00000", "k_sep.fits", attempt=None)], now=11.0) == []
    new = Finished("iabc00000", "k_sep.fits", sources=7, attempt=row.dispatches,
                   input_etag='"e2"', input_size=120)
    assert store.mark_done([new], now=12.0) == ["iabc00000"]
    got = store.get("iabc00000")
    assert (got["state"], got["generation"], got["input_etag"]) == ("done", 2, '"e2"')
    hist = store.history("iabc00000")
    assert [(h["generation"], h["input_etag"], h["sources"]) for h in hist] == [
        (1, '"e1"', 5), (2, '"e2"', 7)]


def test_withdrawn_inputs_keep_their_catalog_and_are_counted(store: StateStore) -> None:
    _add(store, 2)
    _catalogue(store, "iabc00000", '"e"')
    assert store.mark_withdrawn(["iabc00000", "iabc00001"], now=3.0) == 1  # only done ones
    got = store.get("iabc00000")
    assert got["state"] == "done" and got["withdrawn_at"] == 3.0
    assert store.snapshot().withdrawn == 1
    assert store.mark_checked(["iabc00000"], now=4.0) == 1  # back in the archive
    assert store.snapshot().withdrawn == 0


def test_refresh_walks_done_datasets_in_pages(store: StateStore) -> None:
    _add(store, 5)
    for i in (0, 2, 3, 4):
        _catalogue(store, f"iabc{i:05d}", f'"e{i}"')
    page = store.catalogued(limit=2)
    assert [c.obs_id for c in page] == ["iabc00000", "iabc00002"]
    page = store.catalogued(after=page[-1].obs_id, limit=2)
    assert [c.obs_id for c in page] == ["iabc00003", "iabc00004"]
    assert store.catalogued(after="iabc00004") == []
    (c,) = store.catalogued(obs_ids=["iabc00001", "iabc00003"])
    assert (c.obs_id, c.input_etag, c.generation) == ("iabc00003", '"e3"', 1)
    store.set_meta({"refresh_after": "iabc00003"}, add={"refresh_heads": 4})
    store.set_meta({}, add={"refresh_heads": 2})
    assert store.meta("refresh_after") == "iabc00003"
    assert float(store.meta("refresh_heads") or 0) == 6.0


def test_unclaim_takes_named_claims(store: StateStore) -> None:
    _add(store, 1)
    (row,) = store.claim_new(1, executor="lambda", run_id="r")
    (t,) = store.unclaim([Claim(row.obs_id, row.dispatches)], "throttled")
    assert t.state == "new" and store.get(row.obs_id)["attempts"] == 0


def test_version_1_database_migrates_with_its_datasets_and_history(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, 1)
    conn.executemany(
        "INSERT INTO datasets (obs_id, input_key, state, discovered_at, updated_at, done_at, "
        "catalog_key, sources, dispatches) VALUES (?, ?, ?, 1, 1, ?, ?, ?, ?)",
        [("iabc00000", "k0.fits", "done", 50.0, "k0_sep.fits", 9, 2),
         ("iabc00001", "k1.fits", "new", None, None, None, 0),
         ("iabc00002", "k2.fits", "failed", None, None, None, 3)])
    conn.close()
    with StateStore(path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.counts() == {"new": 1, "dispatched": 0, "done": 1, "failed": 1, "skipped": 0,
                              "total": 3}
        assert s.history("iabc00000") == [{
            "obs_id": "iabc00000", "generation": 1, "catalog_key": "k0_sep.fits",
            "input_etag": None, "input_size": None, "sources": 9, "attempt": 2,
            "made_at": 50.0}]
        got = s.get("iabc00001")
        assert (got["generation"], got["min_dispatch"], got["waiting_since"]) == (1, 1, None)
        # The triggers came back with the rebuilt table: counts follow transitions.
        (row,) = s.claim_new(1, executor="local", run_id="r")
        s.mark_skipped([Skip(row.obs_id, row.dispatches, "not imaging")])
        assert s.counts()["skipped"] == 1 and s.counts()["new"] == 0
        assert s.integrity_check() == "ok"


def test_a_reader_waits_for_a_database_being_created(tmp_path: Path) -> None:
    """`status` during a first start: the file exists before its schema; the reader waits
    for the schema rather than failing, and never sees a version in between."""
    import threading

    path = tmp_path / "new.db"
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")  # the file exists, at version 0
    timer = threading.Timer(0.3, lambda: migrate(conn))
    timer.start()
    with StateStore(path, readonly=True) as s:
        assert s.counts()["total"] == 0
    timer.join()
    conn.close()


def test_version_2_database_migrates_its_polls_and_the_archive_counters_work(
        tmp_path: Path) -> None:
    """Version 3 (issue 10): polls count excluded observations, a resweep's listed and
    recorded; status counts refused names by reason."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, 2)
    conn.execute("INSERT INTO polls (kind, started_at, window_lo_mjd, ok, new) "
                 "VALUES ('backfill', 1.0, 55000.0, 1, 3)")
    conn.close()
    with StateStore(path) as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.snapshot().last_poll["excluded"] == 0  # type: ignore[index]
        assert s.first_poll_started() == 1.0 and s.last_poll_started("resweep") is None
        poll = s.begin_poll("resweep", 60000.0, now=5.0)
        found = [Discovered(f"iabc0000{i}", f"hst/public/iabc/iabc0000{i}/iabc0000{i}_flt.fits",
                            60000.0 + i, f"IABC0000{i}") for i in range(3)]
        rejected = [Rejected(f"hst_{i}_flt.fits", "HAP") for i in range(4)] + [
            Rejected("../x_flt.fits", "path components")]
        assert s.record_window(poll, 60010.0, found, observations=5, products=20,
                               rejected=rejected, excluded=2) == 3
        assert s.count_released(60000.0, 60001.0) == 2  # inclusive, as MAST's ranges
        s.finish_poll(poll, ok=True, listed=3, recorded=s.count_released(60000.0, 60010.0))
        snap = s.snapshot()
        assert snap.last_resweep is not None and snap.last_poll is not None
        assert (snap.last_resweep["listed"], snap.last_resweep["recorded"],
                snap.last_resweep["excluded"], snap.last_resweep["new"]) == (3, 3, 2, 3)
        assert snap.refused_by_reason == {"HAP": 4, "path components": 1}
        assert snap.refused_examples["HAP"] == ["hst_0_flt.fits", "hst_1_flt.fits",
                                                "hst_2_flt.fits"]
        assert s.last_poll_started("resweep") == 5.0
        # A resweep's window ends before the cursor: the cursor never moves back.
        assert s.cursor() == 60010.0
        later = s.begin_poll("resweep", 59000.0)
        s.record_window(later, 59100.0, [], observations=0, products=0)
        assert s.cursor() == 60010.0
