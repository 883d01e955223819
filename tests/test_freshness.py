"""The mirror stays true: a reprocessed input is re-catalogued as its next generation, the
others are left alone, a withdrawn input is reported and its catalog kept.

Through the real commands (`mastmirror run --once`, `refresh`, `status`) against the MAST
stand-in and a moto S3 archive; the archive "reprocesses" an exposure by writing new bytes
(a recalibrated SCI, new header keywords) at the same key, which gives it a new ETag.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from astropy.io import fits
from click.testing import CliRunner
from harness import Pipeline, flt_bytes, open_pipeline
from notify_socket import NotifySocket
from s3_fault_proxy import S3FaultProxy

from daemon.cli import main
from daemon.config import load_config
from state.store import StateStore

MASTMIRROR = str(Path(sys.executable).with_name("mastmirror"))


@pytest.fixture
def pipeline20(tmp_path: Path, aws: str) -> Iterator[Pipeline]:
    """An archive of 20 exposures."""
    with open_pipeline(tmp_path, aws, 20, seed=23) as p:
        yield p


def _run(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script, as an operator runs it."""
    return subprocess.run([MASTMIRROR, "--config", str(p.config_path), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ})


def _cli(p: Pipeline, *args: str) -> Any:
    return CliRunner().invoke(main, ["--config", str(p.config_path), *args])


def _status(p: Pipeline) -> dict[str, Any]:
    result = _cli(p, "status", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _outputs(p: Pipeline) -> dict[str, tuple[int, str]]:
    """Each catalog's (mtime in ns, SHA-256 of its bytes), by dataset."""
    return {path.name.removesuffix("_flt_sep.fits"):
            (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            for path in p.output_dir.rglob("*_sep.fits")}


def _md5(data: bytes) -> str:
    """The ETag S3 gives an object uploaded in one part."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _store(p: Pipeline) -> StateStore:
    return StateStore(load_config(p.config_path).state_path, create=False)


def test_refresh_recatalogues_exactly_the_reprocessed_inputs(pipeline20: Pipeline) -> None:
    p = pipeline20
    exposures = p.archive.exposures()
    assert len(exposures) == 20
    first = _run(p, "run", "--once")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "20 dispatched, 20 done, 0 failed" in first.stdout
    before = _outputs(p)
    assert len(before) == 20
    old_etag = {e.dataset: _md5(flt_bytes(e.dataset, e.filter)) for e in exposures}

    reprocessed = [exposures[2], exposures[9], exposures[17]]
    new_etag = p.reprocess(reprocessed)
    assert all(new_etag[d] != old_etag[d] for d in new_etag)

    result = _cli(p, "refresh", "--all")
    assert result.exit_code == 0, result.output
    assert "20 input(s) checked" in result.output
    assert "3 changed, 0 withdrawn, 17 unchanged" in result.output
    assert "requests: 20 HEAD + 0 LIST" in result.output
    doc = _status(p)
    assert doc["datasets"]["new"] == 3 and doc["datasets"]["done"] == 17
    # Until the new catalogs land, the old ones stay where readers find them.
    assert _outputs(p) == before

    second = _run(p, "run", "--once")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 dispatched, 3 done, 0 failed" in second.stdout
    after = _outputs(p)
    names = {e.dataset for e in reprocessed}
    for dataset, stamp in before.items():
        if dataset in names:
            assert after[dataset][1] != stamp[1], f"{dataset}: catalog not remade"
        else:  # byte-identical and never rewritten
            assert after[dataset] == stamp, f"{dataset}: catalog rewritten"
    with _store(p) as store:
        for e in reprocessed:
            row = store.get(e.dataset)
            assert (row["state"], row["generation"], row["input_etag"]) == \
                ("done", 2, new_etag[e.dataset])
            assert [(h["generation"], h["input_etag"]) for h in store.history(e.dataset)] == \
                [(1, old_etag[e.dataset]), (2, new_etag[e.dataset])]
            path = p.output_dir / e.key.replace(".fits", "_sep.fits")
            assert fits.getheader(path, 1)["INETAG"] == new_etag[e.dataset]
        for e in exposures:
            if e.dataset not in names:
                assert store.get(e.dataset)["generation"] == 1
    fresh = _status(p)["freshness"]
    assert fresh["recatalogued"] == 3
    assert (fresh["refresh"]["checked"], fresh["refresh"]["changed"],
            fresh["refresh"]["heads"]) == (20, 3, 20)
    assert fresh["refresh"]["cost_usd"] == pytest.approx(20 * 0.0004 / 1000)
    table = " ".join(_cli(p, "status").output.split())  # as one line, however it wraps
    assert "20 inputs checked, 3 changed, 0 withdrawn; 20 HEAD requests ($8e-06)" in table
    assert "3 catalog(s) made again from a changed input" in table

    # Nothing changed since: a second refresh finds nothing, the next cycle does nothing.
    again = _cli(p, "refresh", "--all")
    assert "0 changed, 0 withdrawn, 20 unchanged" in again.output
    assert p.run_once().dispatched == 0


def test_a_withdrawn_input_is_reported_not_failed(pipeline: Pipeline,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    p = pipeline
    assert p.run_once().done == 6
    gone, kept = p.archive.exposures()[1], p.archive.exposures()[4]
    p.s3().delete_object(Bucket=p.bucket, Key=gone.key)
    catalog = p.output_dir / gone.key.replace(".fits", "_sep.fits")
    before = catalog.read_bytes()

    result = _cli(p, "refresh", gone.dataset, kept.dataset.upper())
    assert result.exit_code == 0, result.output
    assert "1 withdrawn, 1 unchanged" in result.output
    assert f"withdrawn from the archive (catalogs kept): {gone.dataset}" in result.output
    doc = _status(p)
    assert doc["datasets"]["withdrawn"] == 1 and doc["datasets"]["failed"] == 0
    assert doc["datasets"]["done"] == 6
    assert [w["obs_id"] for w in doc["freshness"]["withdrawn_recent"]] == [gone.dataset]
    table = " ".join(_cli(p, "status").output.split())
    assert f"gone from the archive (catalogs kept): {gone.dataset}" in table
    assert catalog.read_bytes() == before
    assert p.run_once().dispatched == 0  # nothing to redo: the catalog stands

    # It comes back: no longer flagged.
    p.s3().put_object(Bucket=p.bucket, Key=gone.key, Body=flt_bytes(gone.dataset, gone.filter))
    assert "1 unchanged" in _cli(p, "refresh", gone.dataset).output
    assert _status(p)["datasets"]["withdrawn"] == 0
    # Not catalogued: said so, and the command fails.
    unknown = _cli(p, "refresh", "iabc99999")
    assert unknown.exit_code == 1 and "not catalogued (or unknown): iabc99999" in unknown.output
    assert _cli(p, "refresh").exit_code == 2

    # Without s3:ListBucket S3 answers 403 for a missing key: the input is looked for with a
    # LIST; only when that is refused too is it left unchecked (and not called withdrawn).
    p.s3().delete_object(Bucket=p.bucket, Key=gone.key)
    with S3FaultProxy(p.endpoint, forbid_missing=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        listed = _cli(p, "refresh", "--all")
    assert listed.exit_code == 0, listed.output
    assert "1 withdrawn, 5 unchanged" in listed.output and "6 HEAD + 1 LIST" in listed.output
    with S3FaultProxy(p.endpoint, forbid_missing=True, forbid_list=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        refused = _cli(p, "refresh", "--all")
    assert refused.exit_code == 1
    assert f"not checked: {gone.dataset}: HEAD and LIST both refused (403)" in refused.output
    with _store(p) as store:
        assert store.get(gone.dataset)["state"] == "done"


def test_kill_9_during_a_recatalogue_loses_nothing_and_counts_one_generation(
        pipeline: Pipeline, tmp_path: Path) -> None:
    """The daemon's own refresh walk finds two reprocessed inputs; the daemon is killed
    with SIGKILL while their new catalogs are being made, again and again; a reader keeps
    opening the catalogs all along. Every read finds a whole catalog (the old one until the
    new one lands), and each change of input makes exactly one generation, one catalog in
    the history. (If a round's re-catalogue finishes before the kill, the archive reprocesses
    the two again, so that kills land mid-way however fast or slow this machine is.)"""
    p = pipeline
    assert p.run_once().done == 6
    exposures = p.archive.exposures()
    before = _outputs(p)
    changed = [exposures[1], exposures[4]]
    etags = {e.dataset: [_md5(flt_bytes(e.dataset, e.filter))] for e in changed}
    p.write_config(schedule={"poll_minutes": 600.0, "refresh_per_hour": 36000,
                             "dispatch_seconds": 0.2, "reconcile_seconds": 0.2})
    db = load_config(p.config_path).state_path
    paths = {e.dataset: p.output_dir / e.key.replace(".fits", "_sep.fits") for e in changed}
    reads: list[str] = []
    problems: list[str] = []
    stop = threading.Event()

    def reprocess() -> None:
        for dataset, etag in p.reprocess(changed, generation=len(etags[changed[0].dataset]) + 1
                                         ).items():
            etags[dataset].append(etag)

    def reader() -> None:
        while not stop.wait(0.02):  # a reader, not a busy loop: the servers share this process
            for dataset, path in paths.items():
                try:
                    etag = fits.getheader(path, 1)["INETAG"]
                except Exception as exc:  # missing or half-written: what must never happen
                    problems.append(f"{dataset}: {type(exc).__name__}: {exc}")
                    continue
                if etag not in etags[dataset]:
                    problems.append(f"{dataset}: INETAG {etag}")
                reads.append(etag)

    def states() -> set[str]:
        """The two datasets' states; "stale" for one done with a catalog of an older input."""
        with StateStore(db, readonly=True) as s:
            rows = [s.get(e.dataset) for e in changed]
        return {"stale" if r["state"] == "done" and r["generation"] < len(etags[r["obs_id"]])
                else r["state"] for r in rows}

    rnd = random.Random(11)
    kills_in_flight = 0
    reprocess()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with NotifySocket.at_path() as notify, (tmp_path / "daemons.log").open("ab") as out:
            for _ in range(8):
                proc = subprocess.Popen([MASTMIRROR, "--config", str(p.config_path), "run"],
                                        stdout=out, stderr=subprocess.STDOUT,
                                        env={**os.environ, **notify.env()})
                notify.wait_for("READY", timeout=60)
                # Kill it while a re-catalogue is in flight (at a random moment of it).
                deadline = time.monotonic() + 60
                while "dispatched" not in states() and states() != {"done"} \
                        and time.monotonic() < deadline:  # the walk finds the change first
                    time.sleep(0.05)
                time.sleep(rnd.uniform(0.0, 0.5))
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(timeout=30) == -signal.SIGKILL
                notify.drain()
                now = states()  # as the killed daemon left them
                kills_in_flight += "dispatched" in now
                if kills_in_flight >= 3:
                    break
                if now == {"done"}:
                    reprocess()  # finished before the kill: give the next round a change
    finally:
        stop.set()
        thread.join(timeout=10)
    log_text = (tmp_path / "daemons.log").read_text()
    assert kills_in_flight >= 1, (states(), log_text[-4000:])
    final = _run(p, "run", "--once")
    assert final.returncode == 0, final.stderr[-3000:]

    assert problems == [] and len(reads) > 0
    after = _outputs(p)
    with _store(p) as store:
        for e in changed:
            row = store.get(e.dataset)
            generations = len(etags[e.dataset])
            assert (row["state"], row["generation"]) == ("done", generations)
            assert [h["input_etag"] for h in store.history(e.dataset)] == etags[e.dataset]
            assert fits.getheader(paths[e.dataset], 1)["INETAG"] == etags[e.dataset][-1]
        for e in exposures:
            if e not in changed:
                assert store.get(e.dataset)["generation"] == 1
                assert after[e.dataset] == before[e.dataset]
        assert store.integrity_check() == "ok"
        assert float(store.meta("recatalogued") or 0) == 2 * (generations - 1)
