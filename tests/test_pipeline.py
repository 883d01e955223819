"""The spine end to end: MAST stand-in -> discovery -> state -> local pool -> catalogs -> done.

Real astroquery talks to the MAST stand-in, the real handler runs in the local process
pool and reads a moto S3 bucket, and the state is a real SQLite file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from click.testing import CliRunner
from harness import Pipeline, flt_bytes, truth_of

from daemon.cli import main
from daemon.config import load_config
from daemon.executors import Lost, Submitted
from daemon.service import Service
from standin.flt import make_broken_flt
from state.store import StateStore


def _status(p: Pipeline) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["--config", str(p.config_path), "status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _catalog(p: Pipeline, key: str) -> fits.FITS_rec:
    path = p.output_dir / key.replace(".fits", "_sep.fits")
    with fits.open(path) as hdul:
        return hdul[1].data.copy()


def _dispatches(p: Pipeline) -> dict[str, int]:
    with StateStore(load_config(p.config_path).state_path, create=False) as s:
        return dict(s.db.execute("SELECT obs_id, dispatches FROM datasets").fetchall())


def test_run_once_catalogs_every_exposure_then_only_the_new_ones(pipeline: Pipeline) -> None:
    p = pipeline
    exposures = p.archive.exposures()
    n = len(exposures)

    # The real console script, as an operator runs it.
    proc = subprocess.run([str(Path(sys.executable).with_name("mastmirror")), "--config",
                           str(p.config_path), "run", "--once"], capture_output=True,
                          text=True, timeout=240, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{n} dispatched, {n} done, 0 failed" in proc.stdout
    # Every log line is JSON and every line about a dataset names it.
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert {e["obs_id"] for e in lines if e.get("event") == "done"} == \
        {e.dataset for e in exposures}
    # A job's lines carry the run and the job (bound once per job), a poll's its poll_id.
    by_event = {e["event"]: e for e in lines}
    assert (by_event["poll started"]["job"], by_event["dispatched"]["job"],
            by_event["done"]["job"]) == ("poll", "dispatch", "reconcile")
    assert len({e["run_id"] for e in lines if "job" in e or e["event"] == "service open"}) == 1
    assert by_event["poll started"]["poll_id"] == by_event["poll finished"]["poll_id"]

    doc = _status(p)
    assert doc["datasets"] == {"new": 0, "dispatched": 0, "done": n, "failed": 0, "skipped": 0,
                               "waiting": 0, "withdrawn": 0, "total": n}
    assert doc["last_poll"]["ok"] is True and doc["last_poll"]["new"] == n
    assert doc["cursor"] is not None

    for e in exposures:
        cat = _catalog(p, e.key)
        truth = truth_of(e.dataset, e.filter)
        bright = truth[truth["snr"] >= 50]
        assert len(bright) >= 5
        d = np.hypot(cat["x"][None, :] - bright["x"][:, None],
                     cat["y"][None, :] - bright["y"][:, None])
        assert (d.min(axis=1) < 1.0).all(), f"{e.dataset}: bright sources missing"

    # M more released: the next cycle dispatches exactly those M.
    before = _dispatches(p)
    new = p.release(3)
    summary = p.run_once()
    assert summary.poll.new == 3 and summary.dispatched == 3 and summary.done == 3
    after = _dispatches(p)
    assert {k for k in after if k not in before} == {e.dataset for e in new}
    assert all(after[k] == before[k] for k in before)

    # A restart on the same database dispatches nothing again.
    again = p.run_once()
    assert again.poll.ok and again.poll.new == 0 and again.dispatched == 0
    assert _dispatches(p) == after
    assert _status(p)["datasets"]["done"] == n + 3


def test_one_unreadable_exposure_fails_with_its_reason(pipeline: Pipeline) -> None:
    p = pipeline
    exposures = p.archive.exposures()
    bad = exposures[2]
    p.s3().put_object(Bucket=p.bucket, Key=bad.key, Body=make_broken_flt("truncated", bad.dataset))
    summary = p.run_once()
    assert summary.failed == 1 and summary.done == len(exposures) - 1
    doc = _status(p)
    (failure,) = doc["recent_failures"]
    assert failure["obs_id"] == bad.dataset
    assert "truncat" in failure["reason"].lower()
    assert not (p.output_dir / bad.key.replace(".fits", "_sep.fits")).exists()
    assert (p.output_dir / bad.key.replace(".fits", "_sep.error.json")).exists()

    # retry puts it back; once the file is mended it is catalogued.
    p.s3().put_object(Bucket=p.bucket, Key=bad.key, Body=flt_bytes(bad.dataset, bad.filter))
    result = CliRunner().invoke(main, ["--config", str(p.config_path), "retry"])
    assert result.exit_code == 0 and "1 dataset(s) back to new" in result.output
    summary = p.run_once()
    assert summary.done == 1 and _status(p)["datasets"]["failed"] == 0


class _BlackHole:
    """An executor that accepts every event and never runs it: results never arrive."""

    kind = "lambda"
    in_flight_cap = None

    def __init__(self) -> None:
        self.events: list[Mapping[str, Any]] = []

    def submit(self, events: Sequence[Mapping[str, Any]]) -> list[Submitted]:
        self.events.extend(events)
        return [Submitted(e["obs_id"], e["attempt"], f"req-{len(self.events)}") for e in events]

    def drain_lost(self) -> list[Lost]:
        return []

    def close(self, *, timeout_s: float = 30.0) -> list[Mapping[str, Any]]:
        return []


def test_a_result_that_never_arrives_is_dispatched_again_then_failed(pipeline: Pipeline,
                                                                      monkeypatch: Any) -> None:
    p = pipeline
    p.write_config(executor={"timeout_seconds": 1.0, "max_attempts": 3})
    hole = _BlackHole()
    monkeypatch.setattr("daemon.service.make_executor", lambda config, on_result=None: hole)
    started = time.monotonic()
    summary = p.run_once()
    n = len(p.archive.exposures())
    assert summary.failed == n and summary.done == 0
    assert len(hole.events) == 3 * n  # each dataset dispatched max_attempts times
    assert sorted(e["attempt"] for e in hole.events if e["obs_id"] == hole.events[0]["obs_id"]) \
        == [1, 2, 3]
    assert time.monotonic() - started >= 3.0  # three timeouts of 1 s each, at least
    for f in _status(p)["recent_failures"]:
        assert f["reason"] == "timed out: no result within 1 s after 3 attempt(s)"
        assert f["attempts"] == 3


def test_status_on_a_fresh_install_says_there_is_no_database(pipeline: Pipeline) -> None:
    result = CliRunner().invoke(main, ["--config", str(pipeline.config_path), "status"])
    assert result.exit_code == 1
    assert "no state database here" in result.output


def test_a_second_daemon_on_the_same_database_is_refused(pipeline: Pipeline) -> None:
    p = pipeline
    first = Service(load_config(p.config_path), config_path=p.config_path)
    first.open()
    try:
        result = CliRunner().invoke(main, ["--config", str(p.config_path), "run", "--once"])
        assert result.exit_code == 3
        assert "another mastmirror daemon" in result.output
        assert f"pid {os.getpid()}" in result.output
        assert _status(p)["daemon"] == {"running": True, "pid": os.getpid()}
    finally:
        first.close()
    assert _status(p)["daemon"]["running"] is False


def test_the_daemon_polls_dispatches_reconciles_and_stops_on_sigterm(pipeline: Pipeline) -> None:
    p = pipeline
    p.write_config(schedule={"poll_minutes": 60.0, "reconcile_seconds": 1.0,
                             "dispatch_seconds": 1.0})
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mastmirror")), "--config",
                             str(p.config_path), "run"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    n = len(p.archive.exposures())
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if Path(p.root / "state/mastmirror.db").exists() and \
                    _status(p)["datasets"]["done"] == n:
                break
            time.sleep(0.5)
        assert _status(p)["datasets"]["done"] == n
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert '"event": "stopping"' in err


def test_reconcile_reads_results_concurrently_from_s3(pipeline: Pipeline) -> None:
    """The output store can be S3: catalogs written there are found and counted."""
    p = pipeline
    out_bucket = p.bucket + "-out"
    p.s3().create_bucket(Bucket=out_bucket)
    p.write_config(output={"url": f"s3://{out_bucket}/mirror"})
    summary = p.run_once()
    n = len(p.archive.exposures())
    assert summary.done == n
    keys = [o["Key"] for o in p.s3().list_objects_v2(Bucket=out_bucket)["Contents"]]
    assert len([k for k in keys if k.endswith("_sep.fits")]) == n
    with StateStore(load_config(p.config_path).state_path, create=False) as s:
        rows = list(s.db["datasets"].rows)
    assert all(r["sources"] and r["sources"] > 10 for r in rows)
    assert all(r["catalog_key"].startswith("hst/public/") for r in rows)


def test_nothing_is_left_running(pipeline: Pipeline) -> None:
    """Closing a service joins its pool: no worker process outlives it."""
    pipeline.run_once()
    import multiprocessing

    assert multiprocessing.active_children() == []
    assert threading.active_count() < 20


def test_the_lambda_executor_end_to_end(pipeline: Pipeline, monkeypatch: Any) -> None:
    """kind = "lambda": Event invocations of two exposures each to a Lambda stand-in that
    runs the real handler (throttled, failing with 5xx, and losing one event along the way),
    results in S3."""
    from daemon.config import handler_env
    from standin.awslambda import LambdaStandIn

    p = pipeline
    out_bucket = p.bucket + "-out"
    p.s3().create_bucket(Bucket=out_bucket)
    p.write_config(output={"url": f"s3://{out_bucket}/mirror"},
                   # Long enough for a run on a loaded machine (a run past it is sent
                   # again, rightly), short enough to see the lost event go again.
                   executor={"kind": "lambda", "concurrency": 4, "timeout_seconds": 12.0,
                             "max_attempts": 3, "batch": 2},
                   schedule={"reconcile_seconds": 0.5},
                   **{"lambda": {"invoke_processes": 1, "invoke_threads": 4}})
    config = load_config(p.config_path)
    exposures = p.archive.exposures()
    lost = exposures[0].dataset
    with LambdaStandIn("mastmirror-sep", workers=2, env=handler_env(config)) as fn:
        fn.arm("throttle", times=3)
        fn.arm("503", times=2)
        fn.arm("lose", times=1, obs_id=lost)  # accepted (202), never run
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", fn.url)
        summary = p.run_once()
        seen = fn.stats()
    assert summary.done == len(exposures) and summary.failed == 0
    # Events carried two exposures each (a lone one only if just one of a pair went again).
    assert sum(seen["accepted_by_obs"].values()) > seen["accepted"]
    with StateStore(config.state_path, create=False) as s:
        rows = {r["obs_id"]: r for r in s.db["datasets"].rows}
    # The lost event carried two neighbours (in obs_id order); both timed out, went again.
    # (Others may too, on a machine too slow for the timeout: that is the same path.)
    order = sorted(rows)
    pair = order[order.index(lost) // 2 * 2:][:2]
    assert all(rows[k]["dispatches"] >= 2 for k in pair)
    assert all(r["request_id"] for r in rows.values())
    assert all(r["sources"] > 10 and r["duration_ms"] for r in rows.values())
    keys = {o["Key"] for o in p.s3().list_objects_v2(Bucket=out_bucket)["Contents"]}
    assert keys == {f"mirror/{e.key.replace('.fits', '_sep.fits')}" for e in exposures}


def test_preview_draws_the_image_with_its_catalog(pipeline: Pipeline, tmp_path: Path) -> None:
    import struct

    p = pipeline
    p.run_once()
    obs = p.archive.exposures()[0].dataset
    out = tmp_path / "p.png"
    result = CliRunner().invoke(main, ["--config", str(p.config_path), "preview", obs.upper(),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1014, 1054)  # the image at 1:1, plus a title strip
    missing = CliRunner().invoke(main, ["--config", str(p.config_path), "preview", "iabc12xyq"])
    assert missing.exit_code == 1 and "not in the state database" in missing.output
