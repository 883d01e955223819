"""The index as the service keeps it: catalogs reconcile into it, `mastmirror search` and
`index check | rebuild` answer from it, and an index that cannot be written costs no
dataset (reconcile goes on; the next pass catches up).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse_single_table
from click.testing import CliRunner
from harness import Pipeline, truth_of
from index_catalogs import catalog_bytes, field_exposure, obs_id

from daemon.cli import main
from daemon.config import ExecutorSection
from daemon.indexcheck import check
from daemon.indexing import Indexer
from daemon.outputs import OutputStore
from daemon.reconcile import reconcile
from lambda_sep.storage import open_store
from state.store import Discovered, StateStore


def _cli(p: Pipeline, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(p.config_path), *args])
    return result.exit_code, result.output


def test_catalogs_reconcile_into_the_index_and_search_finds_the_stars(
        pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    exposures = p.archive.exposures()
    assert p.run_once().done == len(exposures)
    code, out = _cli(p, "index", "check", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["catalogs"] == len(exposures)

    e = exposures[0]
    truth = truth_of(e.dataset)
    star = truth[np.argmax(truth["snr"])]
    sky = SkyCoord(star["ra"], star["dec"], unit="deg")
    positions = [(repr(float(star["ra"])), repr(float(star["dec"]))),
                 (sky.ra.to_string("hourangle", sep=":", precision=3),
                  sky.dec.to_string(sep=":", precision=2, alwayssign=True))]
    for (ra, dec), fmt in zip(positions * 2, ["csv", "votable", "parquet", "table"],
                              strict=True):
        target = tmp_path / f"found.{fmt}"
        code, out = _cli(p, "search", ra, dec, "1.0", "--format", fmt, "-o", str(target))
        assert code == 0, out
        raw = target.read_bytes()
        if fmt == "table":
            rows = [line.split() for line in raw.decode().splitlines()[1:-1]]
            ids, seps = [r[0] for r in rows], [float(r[7]) for r in rows]
        else:
            table = {"csv": lambda b: pacsv.read_csv(io.BytesIO(b)),
                     "parquet": lambda b: pq.read_table(io.BytesIO(b)),
                     "votable": lambda b: parse_single_table(io.BytesIO(b)).to_table()
                     }[fmt](raw)
            ids, seps = list(table["obs_id"]), list(table["separation"])
        # A visit's exposures see the same stars: the star is found in each, nearest first.
        assert e.dataset in {str(i) for i, d in zip(ids, seps, strict=True) if float(d) < 0.3}
        assert [float(d) for d in seps] == sorted(float(d) for d in seps)

    code, out = _cli(p, "search", "12", "95", "10")
    assert code == 2 and "declination" in out
    code, out = _cli(p, "search", "10:00:00", "-45:00:00", "30")  # a "-" is no option
    assert code == 0 and out.endswith("0 detection(s)\n")
    code, out = _cli(p, "index", "rebuild")
    assert code == 0 and f"{len(exposures)} catalogs" in out
    assert _cli(p, "index", "check")[0] == 0


def _in_flight(root: Path, n: int) -> tuple[StateStore, OutputStore]:
    """n datasets dispatched, each with its catalog already in a directory output store."""
    outputs = open_store(f"file://{root}/catalogs")
    found = []
    for i in range(n):
        e = field_exposure(obs_id(i), 150.0 + i * 0.1, 2.0, n=50 + i, seed=i)
        outputs.put_atomic(e.catalog_key, catalog_bytes(e))
        found.append(Discovered(e.obs_id, e.input_key, 60000.0 + i, f"m{i}"))
    store = StateStore(root / "state.db")
    store.record_window(store.begin_poll("poll", 60000.0), 60100.0, found,
                        observations=n, products=n)
    store.claim_new(n, executor="lambda", run_id="r1")
    return store, OutputStore(f"file://{root}/catalogs")


def test_an_index_that_cannot_be_written_costs_no_dataset(tmp_path: Path) -> None:
    store, outputs = _in_flight(tmp_path, 12)
    blocked = tmp_path / "index"
    blocked.write_text("a file where the index directory should be")
    indexer = Indexer(f"file://{blocked}", outputs, store, per_pass=5, batch=2)
    out = reconcile(store, outputs, ExecutorSection(), index=indexer)
    assert out.done == 12 and store.counts()["done"] == 12
    assert indexer.step() == 0  # logged, nothing lost
    blocked.unlink()
    # Each step takes a bounded share of the backlog, until the index holds every one.
    assert [indexer.step() for _ in range(4)] == [5, 5, 2, 0]
    report = check(f"file://{blocked}", store, outputs)
    assert report.ok, report.problems
    assert report.catalogs == 12 and report.rows == sum(50 + i for i in range(12))
    # A restarted daemon finds nothing missing and adds nothing twice.
    again = Indexer(f"file://{blocked}", outputs, store)
    assert again.drain() == 0 and again.backlog == 0
    assert check(f"file://{blocked}", store, outputs).rows == report.rows


def test_the_index_thread_takes_what_reconcile_queues(tmp_path: Path) -> None:
    store, outputs = _in_flight(tmp_path, 4)
    url = f"file://{tmp_path}/index"
    indexer = Indexer(url, outputs, store, idle_s=30.0)
    indexer.start()
    try:
        reconcile(store, outputs, ExecutorSection(), index=indexer)
        deadline = time.monotonic() + 60
        while indexer.backlog != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        indexer.close()
    assert check(url, store, outputs).catalogs == 4


def test_check_names_what_differs(tmp_path: Path) -> None:
    store, outputs = _in_flight(tmp_path, 4)
    reconcile(store, outputs, ExecutorSection())  # no index: the datasets are done anyway
    url = f"file://{tmp_path}/index"
    assert Indexer(url, outputs, store).drain() == 4
    e = field_exposure(obs_id(1), 150.1, 2.0, n=51, seed=1)
    open_store(f"file://{tmp_path}/catalogs").delete(e.catalog_key)
    with store.transaction() as conn:
        conn.execute("UPDATE datasets SET sources = 7 WHERE obs_id = ?", (obs_id(2),))
        conn.execute("UPDATE datasets SET state = 'failed' WHERE obs_id = ?", (obs_id(3),))
    report = check(url, store, outputs)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"catalog missing from the output store: 1 ({obs_id(1)}" in text
    assert f"row counts differ from the catalog's source count: 1 ({obs_id(2)}" in text
    assert f"held but not done in the state: 1 ({obs_id(3)} (failed))" in text
