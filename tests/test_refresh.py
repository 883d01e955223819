"""The refresh walk and its state transitions, on real SQLite files and a real directory
archive (file:// stores have ETags too: mtime and size), no mocks."""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from daemon.archive import ArchiveBucket
from daemon.outputs import OutputStore
from daemon.refresh import MAX_BATCH, pace, refresh, walk
from lambda_sep.storage import open_store
from state.store import Changed, Checked, Discovered, Finished, StateStore

MJD_2024 = 60310.0


def _key(i: int) -> str:
    d = f"iabc{i:04d}q"
    return f"hst/public/iabc/{d}/{d}_flt.fits"


def _catalog(etag: str | None) -> bytes:
    """A small catalog as the handler writes it: a table, its input's ETag in the header."""
    table = fits.BinTableHDU.from_columns([fits.Column("x", "E", array=np.zeros(3))])
    if etag is not None:
        table.header["INETAG"] = etag
        table.header["INSIZE"] = 4
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(out)
    return out.getvalue()


@pytest.fixture
def world(tmp_path: Path) -> tuple[StateStore, ArchiveBucket, Path, OutputStore]:
    """Five inputs in a directory archive, catalogued; the state records their ETags."""
    root = tmp_path / "archive"
    archive = open_store(f"file://{root}")
    outputs = open_store(f"file://{tmp_path / 'out'}")
    store = StateStore(tmp_path / "state.db")
    rows = [Discovered(f"iabc{i:04d}q", _key(i), MJD_2024, f"iabc{i:04d}q") for i in range(5)]
    poll = store.begin_poll("poll", MJD_2024)
    store.record_window(poll, MJD_2024 + 1, rows, observations=5, products=5)
    store.claim_new(10, executor="local", run_id="r")
    for i, row in enumerate(rows):
        archive.put_atomic(row.input_key, b"FLT%d" % i)
        info = archive.head(row.input_key)
        outputs.put_atomic(row.input_key.replace(".fits", "_sep.fits"), _catalog(info.etag))
        store.mark_done([Finished(row.obs_id, "k", attempt=1, input_etag=info.etag,
                                  input_size=info.size)])
    bucket = ArchiveBucket(f"file://{root}", workers=4)
    yield store, bucket, root, OutputStore(f"file://{tmp_path / 'out'}")
    bucket.close()
    store.close()


def test_the_walk_goes_round_in_batches_and_finds_what_changed(world) -> None:
    store, archive, root, _ = world
    seen = []
    for _ in range(3):
        out = walk(store, archive, limit=2, now=100.0)
        seen.append(out.checked)
    assert seen == [2, 2, 1]
    assert store.meta("refresh_after") == "iabc0004q"
    assert float(store.meta("refresh_pass") or 0) == 1
    assert float(store.meta("refresh_pass_checked") or 0) == 5

    # The archive reprocesses one input and withdraws another; the next pass finds both.
    os.utime(root / _key(1), ns=(1, 1))  # another mtime: another ETag
    (root / _key(3)).unlink()
    out = walk(store, archive, limit=2, now=200.0)
    assert out.changed == ["iabc0001q"] and out.checked == 2
    assert float(store.meta("refresh_pass") or 0) == 2
    assert float(store.meta("refresh_pass_checked") or 0) == 2
    out = walk(store, archive, limit=2, now=201.0)
    assert out.withdrawn == ["iabc0003q"] and out.changed == []
    got = store.get("iabc0001q")
    assert (got["state"], got["generation"], got["attempts"]) == ("new", 2, 0)
    assert store.get("iabc0003q")["state"] == "done"
    assert store.get("iabc0003q")["withdrawn_at"] == 201.0
    assert float(store.meta("refresh_changed") or 0) == 1
    assert float(store.meta("refresh_withdrawn") or 0) == 1
    assert out.requests.heads == 0  # a directory's stat() costs no S3 request


def test_refresh_learns_an_unrecorded_etag_from_the_catalog_header(world) -> None:
    store, archive, root, outputs = world
    # Catalogued before the state recorded inputs (a version-1 database): no ETag known.
    with store.transaction() as conn:
        conn.execute("UPDATE datasets SET input_etag = NULL, input_size = NULL "
                     "WHERE obs_id IN ('iabc0000q', 'iabc0002q')")
        conn.execute("UPDATE catalogs SET input_etag = NULL WHERE obs_id = 'iabc0000q'")
    os.utime(root / _key(2), ns=(7, 7))  # this one changed since its catalog was made
    out = refresh(store, archive, outputs, obs_ids=["iabc0000q", "iabc0002q", "nope"])
    assert out.unchanged == 1 and out.changed == ["iabc0002q"] and out.missing == ["nope"]
    got = store.get("iabc0000q")
    assert got["input_etag"] == archive.probe(_key(0)).etag and got["input_size"] == 4
    assert store.history("iabc0000q")[0]["input_etag"] == got["input_etag"]
    # Without the output store there is nothing to compare with: it counts as changed.
    with store.transaction() as conn:
        conn.execute("UPDATE datasets SET input_etag = NULL WHERE obs_id = 'iabc0004q'")
    assert refresh(store, archive, obs_ids=["iabc0004q"]).changed == ["iabc0004q"]


def test_a_batch_is_recorded_whole_or_not_at_all(world) -> None:
    store, _, _, _ = world
    etag = store.get("iabc0000q")["input_etag"]
    batch = {"changed": [Changed("iabc0000q", etag, "new")], "checked": [Checked("iabc0001q")],
             "meta": {"refresh_after": "iabc0002q"}, "add": {"refresh_heads": 3},
             "count_changed": "refresh_changed"}
    # The last step fails (an obs_id SQLite cannot bind): nothing of the batch remains.
    with pytest.raises(sqlite3.Error):
        store.record_refresh(**batch, withdrawn=[object()], now=5.0)  # type: ignore[list-item]
    assert store.get("iabc0000q")["state"] == "done"
    assert store.get("iabc0001q")["checked_at"] is None
    assert store.meta("refresh_after") is None and store.meta("refresh_heads") is None
    moved = store.record_refresh(**batch, withdrawn=["iabc0002q"], now=5.0)
    assert [t.obs_id for t in moved] == ["iabc0000q"]
    assert store.get("iabc0001q")["checked_at"] == 5.0
    assert store.get("iabc0002q")["withdrawn_at"] == 5.0
    assert (store.meta("refresh_after"), store.meta("refresh_changed")) == ("iabc0002q", "1.0")


def test_pace_spreads_the_rate_over_small_runs() -> None:
    assert pace(900) == (15, 60.0)  # the default: 15 a minute, 150,000 in 6.9 days
    assert pace(1) == (1, 3600.0)
    batch, every = pace(150_000)
    assert batch == MAX_BATCH and every == pytest.approx(4.8)


def test_record_found_keeps_the_cursor_and_known_sees_every_state(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        poll = store.begin_poll("poll", MJD_2024)
        store.record_window(poll, MJD_2024 + 1, [Discovered("iabc0000q", _key(0), MJD_2024,
                                                            "iabc0000q")],
                            observations=1, products=1)
        cursor = store.cursor()
        new = [Discovered("iabc0001q", _key(1), MJD_2024 + 9, "iabc0001q"),
               Discovered("iabc0000q", _key(0), MJD_2024, "iabc0000q")]
        assert store.record_found(new) == ["iabc0001q"]  # the known one stays as it was
        assert store.cursor() == cursor
        known = store.known(["iabc0001q", "iabc0000q", "iabc0009q"])
        assert {o: r.state for o, r in known.items()} == {"iabc0000q": "new", "iabc0001q": "new"}
        assert store.counts()["new"] == 2
