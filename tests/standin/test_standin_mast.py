"""Real astroquery against the MAST stand-in: discovery queries, paging, products."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astroquery.exceptions import RemoteServiceError
from astroquery.mast import ObservationsClass

from lambda_sep.contract import archive_key
from standin.archive import Archive
from standin.mast import MastStandin

REPO = Path(__file__).resolve().parents[2]
WFC3IR = {"obs_collection": "HST", "instrument_name": "WFC3/IR"}


def _window(archive: Archive, k: int = 3, n: int = 8) -> tuple[float, float]:
    """The k-th of n equal slices of the archive's release range."""
    span = (archive.end_mjd - archive.start_mjd) / n
    lo = archive.start_mjd + k * span
    return lo, lo + span


def test_query_criteria_returns_exactly_the_window(
    archive: Archive, obs: ObservationsClass
) -> None:
    lo, hi = _window(archive)
    tab = obs.query_criteria(**WFC3IR, t_obs_release=[lo, hi])
    expected = archive.observation_ids(lo, hi)
    assert len(tab) == len(expected) > 50
    assert sorted(tab["obs_id"]) == sorted(expected)
    assert set(tab["obs_collection"]) == {"HST"}
    assert set(tab["instrument_name"]) == {"WFC3/IR"}
    assert np.all((tab["t_obs_release"] >= lo) & (tab["t_obs_release"] <= hi))
    # Associations are calib_level 3, exposures 2; obsid is an integer-like string.
    truth = {e.obs_id: e for e in archive.exposures(lo, hi)}
    for row in tab:
        if row["obs_id"] in truth:
            e = truth[row["obs_id"]]
            assert row["calib_level"] == 2
            assert row["obsid"] == e.obsid
            assert row["filters"] == e.filter
            assert row["t_obs_release"] == e.release  # exact: a cursor can rely on it
        else:
            assert row["calib_level"] == 3
    assert tab["obsid"].dtype.kind == "U"
    assert obs.query_criteria_count(**WFC3IR, t_obs_release=[lo, hi]) == len(expected)


def test_release_window_bounds_are_inclusive(archive: Archive, obs: ObservationsClass) -> None:
    e = archive.exposures()[100]
    tab = obs.query_criteria(**WFC3IR, t_obs_release=[e.release, e.release])
    assert e.obs_id in set(tab["obs_id"])


def test_paging_gives_every_row_once(
    archive: Archive, standin: MastStandin, obs: ObservationsClass
) -> None:
    lo, hi = _window(archive, 5)
    expected = archive.observation_ids(lo, hi)
    obs._portal_api_connection.PAGESIZE = 17
    tab = obs.query_criteria(**WFC3IR, t_obs_release=[lo, hi])
    assert len(tab) == len(expected)
    assert Counter(tab["obs_id"]) == Counter(expected)
    pages = [r.page for r in standin.log if r.service == "Mast.Caom.Filtered"]
    n_pages = -(-len(expected) // 17)
    assert pages == list(range(1, n_pages + 1)) and n_pages >= 4
    last = [r for r in standin.log if r.service == "Mast.Caom.Filtered"][-1]
    assert last.rows == len(expected) - 17 * (n_pages - 1)
    assert last.rows_filtered == len(expected)


def test_explicit_page_and_paging_block(archive: Archive, obs: ObservationsClass) -> None:
    lo, hi = _window(archive, 2)
    total = len(archive.observation_ids(lo, hi))
    conn = obs._portal_api_connection
    filters = conn.build_filter_set("Mast.Caom.Cone", "Mast.Caom.Filtered", **WFC3IR,
                                    t_obs_release=[lo, hi])
    responses = conn.service_request_async("Mast.Caom.Filtered",
                                           {"columns": "*", "filters": filters},
                                           pagesize=10, page=2)
    (resp,) = responses
    body = resp.json()
    assert body["status"] == "COMPLETE" and len(body["data"]) == 10
    assert body["paging"] == {"page": 2, "pageSize": 10, "pagesFiltered": -(-total // 10),
                              "rows": 10, "rowsFiltered": total, "rowsTotal": total}
    assert [f["name"] for f in body["fields"]][:3] == \
        ["dataproduct_type", "obs_collection", "instrument_name"]
    beyond = conn.service_request_async("Mast.Caom.Filtered",
                                        {"columns": "*", "filters": filters},
                                        pagesize=10, page=10_000)[0].json()
    assert beyond["data"] == [] and beyond["paging"]["rowsFiltered"] == total


def test_products_and_flt_filter_yield_the_right_keys(
    archive: Archive, obs: ObservationsClass
) -> None:
    lo, hi = _window(archive, 4)
    tab = obs.query_criteria(**WFC3IR, t_obs_release=[lo, hi])
    products = obs.get_product_list(tab)
    flt = obs.filter_products(products, productSubGroupDescription="FLT")
    names = list(flt["productFilename"])
    # Members come twice (through the association and as themselves): MAST does that,
    # the daemon de-duplicates.
    assert len(names) > len(set(names))
    datasets = {n.removesuffix("_flt.fits") for n in names}
    expected = {e.dataset for e in archive.exposures(lo, hi)}
    # An association released in the window may list members released just outside it
    # (and vice versa): compare on the exposures the window itself lists.
    assert expected <= datasets
    assert datasets - expected <= {e.dataset for e in archive.exposures()}
    keys = {archive_key(d) for d in datasets}
    assert keys <= {k for _, k in archive.flt_keys()}
    assert set(flt["productType"]) == {"SCIENCE"}
    assert all(u == f"mast:HST/product/{n}" for u, n in zip(flt["dataURI"], names, strict=True))
    # parent_obsid is the observation that was asked for; obsID the file's own.
    assert set(products["parent_obsid"]) <= set(tab["obsid"])
    assert set(products["productSubGroupDescription"]) == \
        {"RAW", "IMA", "FLT", "SPT", "TRL", "JIF", "JIT", "DRZ", "ASN"}


def test_products_by_obsid_list_in_batches_and_pages(
    archive: Archive, standin: MastStandin, obs: ObservationsClass
) -> None:
    exposures = archive.exposures()[:300]
    obs._portal_api_connection.PAGESIZE = 250  # 300 exposures x 7 products: 9 pages
    products = obs.get_product_list([e.obsid for e in exposures])
    assert len(products) == sum(7 + (e.association is None) for e in exposures)
    flt = obs.filter_products(products, productSubGroupDescription="FLT")
    assert list(flt["productFilename"]) == [f"{e.dataset}_flt.fits" for e in exposures]
    assert list(flt["obs_id"]) == [e.obs_id for e in exposures]
    # (A fresh process also asks columnsconfig for the service once: not a page.)
    product_pages = [r for r in standin.log
                     if r.service == "Mast.Caom.Products" and r.endpoint == "invoke"]
    assert [r.page for r in product_pages] == list(range(1, len(product_pages) + 1))
    assert len(product_pages) == -(-len(products) // 250)
    # Unknown obsids add nothing.
    assert len(obs.get_product_list(["1", exposures[0].obsid])) == 7 + (
        exposures[0].association is None)


def test_releases_while_running_appear_in_the_next_query(
    make_standin: Callable[..., MastStandin],
    astroquery_for: Callable[[MastStandin], ObservationsClass],
) -> None:
    a = Archive(400, seed=11)
    st = make_standin(a)
    obs = astroquery_for(st)
    lo = a.last_release
    first = obs.query_criteria(**WFC3IR, t_obs_release=[lo - 30, 70000])
    new = a.release(23, at_mjd=lo + 1.25)
    second = obs.query_criteria(**WFC3IR, t_obs_release=[lo - 30, 70000])
    added = set(second["obs_id"]) - set(first["obs_id"])
    assert {e.obs_id for e in new} <= added
    assert len(added) == len(a.observation_ids(lo + 1.25, lo + 1.25))
    flt = obs.filter_products(obs.get_product_list([e.obsid for e in new]),
                              productSubGroupDescription="FLT")
    assert sorted(flt["productFilename"]) == sorted(f"{e.dataset}_flt.fits" for e in new)


@pytest.mark.parametrize(
    ("criteria", "check"),
    [
        ({"filters": ["F160W", "F125W"]}, lambda t: np.isin(t["filters"], ["F160W", "F125W"])),
        ({"filters": "f160w"}, lambda t: t["filters"] == "F160W"),  # case-insensitive
        ({"calib_level": 3}, lambda t: t["calib_level"] == 3),
        ({"t_exptime": [500, 900]},
         lambda t: (t["t_exptime"] >= 500) & (t["t_exptime"] <= 900)),
        ({"target_name": "NGC-*"}, lambda t: np.char.startswith(t["target_name"].astype(str),
                                                                "NGC-")),
        ({"obs_id": "*010"}, lambda t: np.char.endswith(t["obs_id"].astype(str), "010")),
        ({"filters": ["F105W", "*N"]}, lambda t: (t["filters"] == "F105W")
         | np.char.endswith(t["filters"].astype(str), "N")),
        ({"intentType": "calibration"}, lambda t: t["intentType"] == "calibration"),
        ({"s_dec": [-10, 30]}, lambda t: (t["s_dec"] >= -10) & (t["s_dec"] <= 30)),
    ],
    ids=["list", "case", "calib_level", "continuous", "wildcard", "obs_id-wildcard",
         "values+wildcard", "intent", "s_dec"],
)
def test_filter_forms_match_client_side_filtering(
    archive: Archive, obs: ObservationsClass, criteria: dict, check: Callable
) -> None:
    lo, hi = archive.start_mjd, archive.end_mjd
    everything = obs.query_criteria(**WFC3IR, t_obs_release=[lo, hi])
    want = everything[check(everything)]
    got = obs.query_criteria(**WFC3IR, t_obs_release=[lo, hi], **criteria)
    assert sorted(got["obs_id"]) == sorted(want["obs_id"])
    assert len(got) > 0 or criteria == {"intentType": "calibration"}


def test_discrete_mismatch_returns_nothing(obs: ObservationsClass) -> None:
    with pytest.warns(Warning, match="no results"):
        tab = obs.query_criteria(obs_collection="JWST", t_obs_release=[50000, 70000])
    assert len(tab) == 0


def test_unknown_service_is_a_mast_error(obs: ObservationsClass) -> None:
    with pytest.raises(RemoteServiceError, match="Unknown service"):
        obs._portal_api_connection.service_request("Mast.No.Such.Service", {})


def test_long_poll_executing_answers(
    make_standin: Callable[..., MastStandin],
    astroquery_for: Callable[[MastStandin], ObservationsClass],
    archive: Archive,
) -> None:
    st = make_standin(archive, executing_polls=2)
    obs = astroquery_for(st)
    lo, hi = _window(archive, 6)
    obs._portal_api_connection.PAGESIZE = 40
    tab = obs.query_criteria(**WFC3IR, t_obs_release=[lo, hi])
    assert sorted(tab["obs_id"]) == sorted(archive.observation_ids(lo, hi))
    statuses = [r.mast_status for r in st.log if r.service == "Mast.Caom.Filtered"]
    n_pages = -(-len(tab) // 40)
    assert statuses == ["EXECUTING", "EXECUTING", "COMPLETE"] * n_pages


def test_metadata_from_the_columns_configs(obs: ObservationsClass) -> None:
    meta = obs.get_metadata("observations")
    assert {"obs_id", "t_obs_release", "obsid"} <= set(meta["Column Name"])
    pmeta = obs.get_metadata("products")
    assert {"productFilename", "parent_obsid", "productSubGroupDescription"} <= set(
        pmeta["Column Name"])


def test_concurrent_clients(
    archive: Archive,
    standin: MastStandin,
    astroquery_for: Callable[[MastStandin], ObservationsClass],
) -> None:
    lo, hi = _window(archive, 1)
    expected = sorted(archive.observation_ids(lo, hi))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            obs = astroquery_for(standin)
            obs._portal_api_connection.PAGESIZE = 50
            results.append(sorted(obs.query_criteria(**WFC3IR, t_obs_release=[lo, hi])
                                  ["obs_id"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 6


def test_binds_to_loopback_only(archive: Archive) -> None:
    with pytest.raises(ValueError, match="loopback"):
        MastStandin(archive, host="0.0.0.0")


def test_control_api_release_fault_and_stats(standin: MastStandin) -> None:
    def call(method: str, path: str, body: dict | None = None) -> object:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(standin.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    armed = call("POST", "/standin/faults", {"kind": "http_503", "times": 2})
    assert armed["kind"] == "http_503"  # type: ignore[index]
    assert len(call("GET", "/standin/faults")) == 1  # type: ignore[arg-type]
    call("DELETE", "/standin/faults")
    assert standin.faults.armed == []
    stats = call("GET", "/standin/stats")
    assert stats["n_exposures"] == standin.archive.n_exposures  # type: ignore[index]


def test_cli_serves_until_sigterm(
    point_at: Callable[[ObservationsClass, str], ObservationsClass],
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "standin.mast", "--exposures", "300", "--seed", "5",
         "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        obs = point_at(ObservationsClass(), url)
        tab = obs.query_criteria(**WFC3IR, t_obs_release=[50000, 70000])
        assert len(tab) == Archive(300, seed=5).n_observations
        with urllib.request.urlopen(urllib.request.Request(
                url + "/standin/release", data=b'{"n": 4, "at_mjd": 65000}', method="POST"),
                timeout=10) as r:
            assert len(json.loads(r.read())["released"]) == 4
        assert len(obs.query_criteria(**WFC3IR, t_obs_release=[65000, 65000])) >= 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
