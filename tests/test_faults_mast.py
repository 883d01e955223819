"""MAST failures and hostile MAST answers, seen through discovery and the running daemon.

The poll is recorded as failed, the cursor does not move, the daemon keeps running and
catches up once MAST answers again. Names with path tricks are refused with a reason and
nothing is written for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness import Pipeline

from daemon.cli import main
from daemon.config import load_config
from daemon.discovery import poll
from daemon.service import Service, make_mast_client
from lambda_sep.contract import product_key
from standin.archive import BAD_KINDS
from state.store import StateStore

FAULTS = ["http_500", "http_503", "hang", "truncated", "malformed", "html", "disconnect",
          "empty_page", "error_status"]


def _status(p: Pipeline) -> dict:
    out = CliRunner().invoke(main, ["--config", str(p.config_path), "status", "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


@pytest.mark.parametrize("kind", FAULTS)
def test_a_mast_failure_fails_the_poll_and_keeps_the_cursor(pipeline: Pipeline,
                                                            kind: str) -> None:
    p = pipeline
    p.write_config(mast={"timeout_seconds": 1.0, "window_days": 400.0})
    config = load_config(p.config_path)
    client = make_mast_client(config)
    if kind == "empty_page":
        client._obs._portal_api_connection.PAGESIZE = 2  # a paged answer to break
    store = StateStore(config.state_path)
    try:
        first = poll(store, client, config.mast)
        assert first.ok, first.error
        cursor = store.cursor()
        total = store.counts()["total"]
        p.release(4)
        # Enough failures to outlast the client's own retries of 502/503/504.
        fault = p.mast.faults.arm(kind, times=None, seconds=3.0,
                                  service="Mast.Caom.Filtered", endpoint="invoke")
        failed = poll(store, client, config.mast)
        assert not failed.ok and failed.error and failed.error.startswith("MAST ")
        assert store.cursor() == cursor
        assert store.counts()["total"] == total  # nothing half-recorded
        snap = store.snapshot()
        assert snap.last_poll["ok"] is False and snap.last_poll["error"] == failed.error
        p.mast.faults.disarm(fault)
        again = poll(store, client, config.mast)
        assert again.ok and again.new == 4 and store.cursor() > cursor
    finally:
        client.close()
        store.close()


def test_an_empty_page_in_the_middle_is_caught_not_swallowed(pipeline: Pipeline) -> None:
    """astroquery alone would return fewer rows; discovery must notice and fail the poll."""
    p = pipeline
    p.write_config(mast={"window_days": 400.0})
    config = load_config(p.config_path)
    client = make_mast_client(config)
    client._obs._portal_api_connection.PAGESIZE = 2
    p.mast.faults.arm("empty_page", times=1, page=2, service="Mast.Caom.Filtered")
    with StateStore(config.state_path) as store:
        out = poll(store, client, config.mast)
        assert not out.ok
        assert "incomplete" in out.error
        assert store.counts()["total"] == 0 and store.cursor() is None
    client.close()


def test_the_daemon_keeps_running_through_an_outage_and_catches_up(pipeline: Pipeline) -> None:
    p = pipeline
    p.write_config(mast={"timeout_seconds": 2.0})
    fault = p.mast.faults.arm("http_500", times=None, endpoint="invoke")
    service = Service(load_config(p.config_path), config_path=p.config_path)
    service.open()
    try:
        summary = service.run_once()
        assert not summary.ok and summary.counts["total"] == 0
        doc = _status(p)
        assert doc["last_poll"]["ok"] is False and "HTTP 500" in doc["last_poll"]["error"]
        assert doc["cursor"] is None
        p.mast.faults.disarm(fault)
        summary = service.run_once()  # the same process, the next cycle
        assert summary.ok and summary.done == len(p.archive.exposures())
    finally:
        service.close()


def test_run_once_exits_non_zero_when_mast_is_down(pipeline: Pipeline) -> None:
    p = pipeline
    p.write_config(mast={"timeout_seconds": 20.0})
    p.mast.faults.arm("http_503", times=None, endpoint="invoke")
    result = CliRunner().invoke(main, ["--config", str(p.config_path), "run", "--once"])
    assert result.exit_code == 1
    assert "poll: FAILED (MAST observations query failed: HTTP 503" in result.output


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_names_with_path_tricks_are_refused(kind: str) -> None:
    with pytest.raises(ValueError):
        product_key(BAD_KINDS[kind] + "_flt.fits")


def test_planted_bad_products_are_refused_and_nothing_escapes(pipeline: Pipeline,
                                                              tmp_path: Path) -> None:
    p = pipeline
    for kind in BAD_KINDS:
        p.archive.plant_bad(kind, at_mjd=60400.0)
    summary = p.run_once()
    n = len(p.archive.exposures())
    assert summary.ok and summary.done == n and summary.counts["total"] == n
    doc = _status(p)
    assert doc["rejected_products"] == len(BAD_KINDS)
    assert doc["last_poll"]["rejected"] == len(BAD_KINDS)
    with StateStore(load_config(p.config_path).state_path, create=False) as s:
        reasons = dict(s.db.execute("SELECT name, reason FROM rejects").fetchall())
    assert all(reasons.values())
    # Every file written is under the output directory and is a catalog of a good dataset
    # (or the detection index of those catalogs).
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    outside = [f for f in written if not (f.is_relative_to(p.output_dir)
                                          or f.is_relative_to(p.root / "state")
                                          or f.is_relative_to(p.root / "index")
                                          or f == p.config_path)]
    assert outside == []
    assert all(f.name.endswith("_sep.fits") for f in p.output_dir.rglob("*") if f.is_file())
