"""Issue 10 end to end: what the real MAST and stpubdata do, through the daemon.

The stand-in archive gains (tests/harness.py, ``add_archive_scenario``) an exposure filed
under a folder that is not its file's root, one whose folder only MAST's path lookup knows,
calibration observations, G141 and G102 exposures, Hubble Advanced Products names, an
exposure whose file reaches the bucket after MAST lists it, and, once the daemon has polled,
an exposure released 10 days before the cursor. ``mastmirror run --once`` (the console
script and in-process) and ``mastmirror run`` must catalogue every science exposure at the
key MAST gives, never catalogue nor fail the calibration and grism ones, find the late one
by the next resweep, finish the delayed one without spending an attempt on its wait, and
sum the refused names up in one line per poll.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from harness import Pipeline, add_archive_scenario, upload_delayed
from s3_fault_proxy import S3FaultProxy

from daemon.cli import main
from daemon.config import load_config
from daemon.mjd import mjd
from state.store import StateStore

MASTMIRROR = str(Path(sys.executable).with_name("mastmirror"))
HAP = "a Hubble Advanced Products name (hst_...), not an exposure's file"


def _status(p: Pipeline) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["--config", str(p.config_path), "status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _rows(p: Pipeline) -> dict[str, dict[str, Any]]:
    with StateStore(load_config(p.config_path).state_path, create=False) as s:
        return {r["obs_id"]: r for r in s.db["datasets"].rows}


def _catalogued(p: Pipeline, key: str) -> bool:
    return (p.output_dir / key.replace(".fits", "_sep.fits")).is_file()


def test_run_once_meets_the_real_archive(pipeline: Pipeline) -> None:
    p = pipeline
    scenario = add_archive_scenario(p)
    p.write_config(archive={"recheck_seconds": 1.0}, mast={"overlap_days": 3.0})
    base = [e for e in p.archive.exposures() if e.science_image
            and e.dataset not in {x.dataset for x in scenario.catalogued}]

    # The backfill, by the console script, as an operator runs it.
    proc = subprocess.run([MASTMIRROR, "--config", str(p.config_path), "run", "--once"],
                          capture_output=True, text=True, timeout=240, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(1 waiting for the archive)" in proc.stdout
    log = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    # The refused names: one summary line for the poll, none per name.
    (summary,) = [e for e in log if e["event"] == "product names refused"]
    assert summary["refused"] == 2 and summary["by_reason"] == {HAP: 2}
    assert sorted(summary["examples"][HAP]) == sorted(scenario.hap)
    assert not [e for e in log if e["event"] == "product refused"]
    # MAST's path lookup was asked once, for both products whose root and obs_id disagree.
    lookups = [r for r in p.mast.log if r.endpoint == "path_lookup"]
    assert len(lookups) == 1 and lookups[0].rows == 2

    doc = _status(p)
    n = len(base) + 3
    assert doc["datasets"] == {"new": 1, "waiting": 1, "dispatched": 0, "done": n - 1,
                               "failed": 0, "skipped": 0, "withdrawn": 0, "total": n}
    assert doc["last_poll"]["excluded"] == 2  # the grisms, counted, never recorded
    assert doc["refused"] == {"total": 2, "by_reason": {HAP: 2},
                              "examples": {HAP: sorted(scenario.hap)}}
    rows = _rows(p)
    # Keys follow MAST: the obs_id's folder, or the path lookup's; the dataset is the file.
    assert rows["ifld01a1q"]["input_key"] == "hst/public/ifld/ifld01a1m/ifld01a1q_flt.fits"
    assert rows["ifld02a1q"]["input_key"] == "hst/public/ifld/ifld02a1n/ifld02a1q_flt.fits"
    assert rows["ifld02a1q"]["mast_obs_id"] == "IFLD02A1M"
    for e in [*base, scenario.in_folder, scenario.looked_up]:
        assert rows[e.dataset]["state"] == "done" and _catalogued(p, e.key), e
    # Calibration and grism exposures: never recorded, so never catalogued nor failed.
    for e in scenario.calibration + scenario.grism:
        assert e.dataset not in rows and not _catalogued(p, e.key)
    held = rows[scenario.delayed.dataset]
    assert held["state"] == "new" and held["waiting_since"] and held["attempts"] == 0

    # The file reaches the bucket; the next cycle after the held dataset's recheck time
    # catalogues it on its first attempt. The hold backs off with the time already waited,
    # so a slow first run (a loaded machine) pushes the recheck past the next instant.
    upload_delayed(p, scenario)
    time.sleep(max(0.0, held["not_before"] - time.time()) + 0.05)
    cycle = p.run_once()
    assert cycle.ok and cycle.done == 1 and cycle.waiting == 0
    delayed = _rows(p)[scenario.delayed.dataset]
    assert (delayed["state"], delayed["attempts"], delayed["dispatches"]) == ("done", 1, 2)
    assert delayed["waiting_since"] is None

    # Released 10 days before the cursor, listed only now: past the overlap of a poll...
    cursor = _status(p)["cursor_mjd"]
    (late,) = p.archive.release(1, at_mjd=cursor - 10.0)
    p.upload([late])
    assert p.run_once().poll.new == 0 and late.dataset not in _rows(p)
    # ...found by the next resweep, which says how MAST's count compares with ours.
    sweep = CliRunner().invoke(main, ["--config", str(p.config_path), "resweep"])
    assert sweep.exit_code == 0, sweep.output
    assert "MAST lists 1 exposure(s), the database holds 1; 1 added" in sweep.output
    cycle = p.run_once()
    assert cycle.done == 1 and _rows(p)[late.dataset]["state"] == "done"
    doc = _status(p)
    assert doc["last_resweep"]["ok"] and doc["last_resweep"]["new"] == 1
    assert (doc["last_resweep"]["listed"], doc["last_resweep"]["recorded"]) == (1, 1)
    assert doc["datasets"]["done"] == n + 1 and doc["datasets"]["failed"] == 0

    # The whole archive again: nothing more to add, and the counts agree.
    everything = CliRunner().invoke(main, ["--config", str(p.config_path), "resweep", "--all"])
    assert everything.exit_code == 0, everything.output
    assert f"MAST lists {n + 1} exposure(s), the database holds {n + 1}; 0 added" \
        in everything.output
    table = CliRunner().invoke(main, ["--config", str(p.config_path), "status"])
    assert "last resweep" in table.output and "2 a Hubble Advanced Products" in table.output


def test_the_daemon_meets_the_real_archive(pipeline: Pipeline) -> None:
    """``mastmirror run``: the delayed file arrives while the daemon waits for it, and the
    late listing is found by the daemon's own resweep (every 7.2 s here, 24 h by default)."""
    p = pipeline
    scenario = add_archive_scenario(p)
    p.write_config(archive={"recheck_seconds": 1.0},
                   schedule={"poll_minutes": 60.0, "reconcile_seconds": 0.5,
                             "dispatch_seconds": 0.5, "resweep_hours": 0.002})
    expected = {e.dataset for e in p.archive.exposures() if e.science_image}
    daemon = subprocess.Popen([MASTMIRROR, "--config", str(p.config_path), "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    late = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            doc = _status(p) if (p.root / "state/mastmirror.db").exists() else None
            # The backfill done (the cursor at now, not at one of its windows' ends).
            if doc and doc["cursor_mjd"] and mjd(time.time()) - doc["cursor_mjd"] < 1.0 \
                    and late is None:
                # Polled: now MAST lists an exposure released 10 days before the cursor,
                # and the delayed file reaches the bucket.
                (late,) = p.archive.release(1, at_mjd=doc["cursor_mjd"] - 10.0)
                p.upload([late])
                upload_delayed(p, scenario)
                expected.add(late.dataset)
            if doc and late and doc["datasets"]["done"] == len(expected):
                break
            time.sleep(0.5)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err[-2000:]
    rows = _rows(p)
    assert {k for k, r in rows.items() if r["state"] == "done"} == expected, err[-3000:]
    assert all(r["state"] == "done" for r in rows.values())
    assert rows[scenario.delayed.dataset]["attempts"] == 1
    with StateStore(load_config(p.config_path).state_path, create=False) as s:
        kind = s.db.execute("SELECT kind FROM polls WHERE id = ?",
                            (rows[late.dataset]["poll_id"],)).fetchone()[0]
    assert kind == "resweep"
    log = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    refused = [e for e in log if e["event"] == "product names refused"]
    assert refused and all(e["refused"] == 2 for e in refused)  # once per poll or resweep


def test_the_archive_is_read_unsigned(pipeline: Pipeline, monkeypatch: Any,
                                      tmp_path: Path) -> None:
    """A local S3 that refuses every signed request to the archive bucket, as stpubdata
    refuses a role without rights on it: the archive is read unsigned, the output store
    signed; with ``anonymous = false`` the same reads fail, clearly."""
    p = pipeline
    out_bucket = p.bucket + "-out"
    p.s3().create_bucket(Bucket=out_bucket)
    p.write_config(output={"url": f"s3://{out_bucket}/mirror"})
    with S3FaultProxy(p.endpoint, refuse_signed=p.bucket) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        proc = subprocess.run([MASTMIRROR, "--config", str(p.config_path), "run", "--once"],
                              capture_output=True, text=True, timeout=240, env={**os.environ})
        assert proc.returncode == 0, proc.stderr[-3000:]
        n = len(p.archive.exposures())
        assert _status(p)["datasets"]["done"] == n
        assert proxy.counts["archive signed"] == 0 and proxy.counts["archive unsigned"] >= 2 * n
        keys = {o["Key"] for o in p.s3().list_objects_v2(Bucket=out_bucket)["Contents"]}
        assert len(keys) == n  # written signed, through the same proxy
        obs = p.archive.exposures()[0].dataset
        png = CliRunner().invoke(main, ["--config", str(p.config_path), "preview", obs, "-o",
                                        str(tmp_path / "p.png")])
        assert png.exit_code == 0, png.output
        assert proxy.counts["archive signed"] == 0

        # Signed instead: refused, and failed for good (AccessDenied is no transient).
        p.write_config(output={"url": f"s3://{out_bucket}/mirror"},
                       archive={"anonymous": False})
        (signed,) = p.release(1)
        summary = p.run_once()
        assert summary.failed == 1 and summary.done == 0
        (failure,) = _status(p)["recent_failures"]
        assert failure["obs_id"] == signed.dataset and "403" in failure["reason"]
        assert failure["attempts"] == 1
        assert proxy.counts["archive signed"] >= 1


def test_intent_and_filters_are_config(pipeline: Pipeline) -> None:
    """``intent = []`` follows calibration observations too; ``exclude_filters = []`` records
    the grism exposures (the function then decides what to do with them)."""
    p = pipeline
    scenario = add_archive_scenario(p)
    p.write_config(mast={"intent": [], "exclude_filters": []})
    from daemon.discovery import poll
    from daemon.service import make_mast_client

    config = load_config(p.config_path)
    client = make_mast_client(config)
    try:
        with StateStore(config.state_path) as store:
            outcome = poll(store, client, config.mast, now=time.time())
            recorded = {r[0] for r in store.db.execute("SELECT obs_id FROM datasets")}
    finally:
        client.close()
    assert outcome.ok and outcome.excluded == 0
    assert {e.dataset for e in scenario.calibration + scenario.grism} <= recorded
    assert mjd(time.time()) - outcome.window[1] < 0.01


def test_grism_exposures_let_through_discovery_are_skipped_by_the_function(
        pipeline: Pipeline) -> None:
    """Defence in depth: with ``exclude_filters = []`` the grism exposures reach the function,
    which refuses them by their headers; they end ``skipped`` with the reason, never failed
    and never retried, and calibration images are catalogued like any other."""
    p = pipeline
    scenario = add_archive_scenario(p)
    p.write_config(mast={"intent": [], "exclude_filters": []})
    summary = p.run_once()
    assert summary.failed == 0
    config = load_config(p.config_path)
    with StateStore(config.state_path, create=False) as store:
        for e in scenario.grism:
            row = store.get(e.dataset)
            assert row is not None and row["state"] == "skipped", row
            assert "SPECTROSCOPIC" in row["skip_reason"] and row["dispatches"] == 1
        for e in scenario.calibration:
            assert store.get(e.dataset)["state"] == "done"
        assert store.counts()["skipped"] == len(scenario.grism)
    doc = _status(p)
    assert doc["datasets"]["skipped"] == len(scenario.grism) and doc["datasets"]["failed"] == 0
    for e in scenario.grism:
        skip = p.output_dir / (e.key[: -len(".fits")] + "_sep.skipped.json")
        assert skip.is_file() and not skip.with_name(skip.name.replace(".skipped.json",
                                                                       ".fits")).exists()
