"""Discovery's rules for the real archive, piece by piece: keys that follow MAST's folders and
path lookup, grism exclusion, refused names, resweeps (the end-to-end proof is
tests/test_real_archive.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import MastSection
from daemon.discovery import (
    Unplaced,
    excluded,
    place,
    poll,
    resweep,
    resweep_due,
    select_products,
)
from daemon.mast import MastClient, MastError, Observation, Product
from daemon.mjd import mjd
from standin.archive import Archive
from standin.mast import MastStandin
from state.store import StateStore


def _product(filename: str, obs_id: str, obsid: str = "1", subgroup: str = "FLT") -> Product:
    return Product(filename, obs_id, obsid, obsid, subgroup,
                   data_uri=f"mast:HST/product/{filename}")


def test_a_product_in_its_own_folder_gets_its_key_at_once() -> None:
    obs = [Observation("1", "icxe15wwq", 60000.0, "F160W")]
    finds = select_products(obs, [_product("icxe15wwq_flt.fits", "ICXE15WWQ"),
                                  _product("icxe15wwq_raw.fits", "ICXE15WWQ", subgroup="RAW"),
                                  _product("icxe15wwj_jif.fits", "ICXE15WWQ", subgroup="JIF")],
                            "FLT")
    (d,) = finds.datasets
    assert (d.obs_id, d.input_key, d.mast_obs_id) == (
        "icxe15wwq", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits", "ICXE15WWQ")
    assert finds.unplaced == [] and finds.rejected == []


def test_a_product_whose_root_and_obs_id_disagree_is_placed_by_mast() -> None:
    # astroquery's recorded products.json: u9o40504j_jif.fits of obs_id U9O40504M.
    obs = [Observation("1", "U9O40504M", 60000.0)]
    finds = select_products(obs, [_product("u9o40504j_jif.fits", "U9O40504M", subgroup="JIF")],
                            "JIF")
    assert finds.datasets == []
    (u,) = finds.unplaced
    assert (u.dataset, u.folder, u.uri) == ("u9o40504j", "u9o40504m",
                                            "mast:HST/product/u9o40504j_jif.fits")
    # The lookup's path wins; without one, the obs_id names the folder.
    found, refused = place([u], {u.uri: "hst/public/u9o4/u9o40504m/u9o40504j_jif.fits"})
    assert [d.input_key for d in found] == ["hst/public/u9o4/u9o40504m/u9o40504j_jif.fits"]
    assert refused == []
    found, _ = place([u], {u.uri: None})
    assert [d.input_key for d in found] == ["hst/public/u9o4/u9o40504m/u9o40504j_jif.fits"]


@pytest.mark.parametrize("path", [
    "hst/public/u9o4/u9o40504m/u9o40504q_jif.fits",  # another file
    "hst/public/u9o4/u9o41504m/u9o40504j_jif.fits",  # a folder unlike the name
    "hst/public/u9o4/../../etc/u9o40504j_jif.fits",
    "other/u9o4/u9o40504m/u9o40504j_jif.fits",
])
def test_a_lookup_path_outside_the_layout_refuses_the_product(path: str) -> None:
    u = Unplaced("u9o40504j", "u9o40504j_jif.fits", "u9o40504m", "mast:x", 60000.0, "U9O40504M")
    found, refused = place([u], {"mast:x": path})
    assert found == [] and [r.reason for r in refused] == [
        "MAST's cloud path for it does not follow the archive's layout"]


def test_an_obs_id_unlike_the_name_refuses_the_product_without_a_lookup_path() -> None:
    u = Unplaced("icxe15wwq", "icxe15wwq_flt.fits", "ibxy01abq", "mast:y", 60000.0, "IBXY01ABQ")
    found, refused = place([u], {})
    assert found == [] and "does not share" in refused[0].reason


def test_grism_observations_are_excluded_by_their_filters() -> None:
    exclude = frozenset({"G102", "G141"})
    assert excluded("G141", exclude) and excluded("g102", exclude)
    assert excluded("F160W;G141", exclude)  # CAOM separates several filters with ";"
    assert not excluded("F160W", exclude) and not excluded("", exclude)
    assert not excluded("G141", frozenset())


def test_refused_names_are_counted_by_reason() -> None:
    obs = [Observation("1", "hst_16514_21_wfc3_ir_f160w_iepo21", 60000.0)]
    finds = select_products(obs, [
        _product("hst_16514_21_wfc3_ir_f160w_iepo21aaq_flt.fits", "hst_16514"),
        _product("../icxe15wwq_flt.fits", "x")], "FLT")
    assert sorted(r.reason for r in finds.rejected) == [
        "a Hubble Advanced Products name (hst_...), not an exposure's file",
        "product file name has path components"]


# -- against the MAST stand-in and a real database --------------------------------------

@pytest.fixture
def mast() -> Iterator[tuple[Archive, MastStandin, MastClient]]:
    archive = Archive(30, seed=5, start_mjd=60000.0, end_mjd=60100.0)
    with MastStandin(archive) as standin:
        client = MastClient(standin.url, collection="HST", instrument="WFC3/IR", timeout_s=20,
                            intent=["science"])
        try:
            yield archive, standin, client
        finally:
            client.close()


def test_the_path_lookup_is_asked_40_uris_at_a_time(mast: tuple[Archive, MastStandin,
                                                                  MastClient]) -> None:
    archive, standin, client = mast
    filed = archive.add_exposure(at_mjd=60050.0, dataset="ifld01a1q", obs_id="ifld01a1m")
    uris = [f"mast:HST/product/{e.dataset}_flt.fits" for e in archive.exposures()]
    # A jitter file lives in its exposure's folder (u9o40504j_jif.fits in u9o40504m/).
    uris += [f"mast:HST/product/{e.dataset[:-1]}j_jif.fits" for e in archive.exposures()]
    uris.append("mast:HST/product/does_not_exist.fits")
    paths = client.cloud_paths(uris)
    assert [r.rows for r in standin.log if r.endpoint == "path_lookup"] == [40, len(uris) - 40]
    assert paths["mast:HST/product/ifld01a1q_flt.fits"] == filed.key
    assert paths["mast:HST/product/does_not_exist.fits"] is None
    assert paths["mast:HST/product/ifld01a1j_jif.fits"] == \
        "hst/public/ifld/ifld01a1m/ifld01a1j_jif.fits"
    assert all(paths[f"mast:HST/product/{e.dataset}_flt.fits"] == e.key
               for e in archive.exposures())


def test_a_failed_path_lookup_fails_the_window_and_keeps_the_cursor(
        mast: tuple[Archive, MastStandin, MastClient], tmp_path: Path) -> None:
    archive, standin, client = mast
    archive.add_exposure(at_mjd=60090.0, dataset="ifld01a1q", obs_id="ifld01a1m")
    standin.faults.arm("http_503", times=None, endpoint="path_lookup")
    section = MastSection(url=standin.url, since="2023-02-25", window_days=30.0)
    with StateStore(tmp_path / "s.db") as store:
        outcome = poll(store, client, section, now=time.time())
        assert not outcome.ok and "path lookup" in (outcome.error or "")
        assert store.cursor() is not None and store.cursor() < 60090.0
        standin.faults.disarm()
        again = poll(store, client, section, now=time.time())
        assert again.ok and store.get("ifld01a1q")["input_key"] == \
            "hst/public/ifld/ifld01a1m/ifld01a1q_flt.fits"


def test_a_resweep_records_what_was_missed_and_never_moves_the_cursor_back(
        mast: tuple[Archive, MastStandin, MastClient], tmp_path: Path) -> None:
    archive, _, client = mast
    section = MastSection(url="http://127.0.0.1", since="2023-02-25", resweep_days=30.0,
                          overlap_days=1.0)
    now = time.time()
    with StateStore(tmp_path / "s.db") as store:
        assert resweep(store, client, section) is None  # nothing polled yet
        assert not resweep_due(store, 24.0, now=now)
        first = poll(store, client, section, now=now)
        cursor = store.cursor()
        assert first.ok and cursor is not None
        assert not resweep_due(store, 24.0, now=now + 3600)
        assert resweep_due(store, 24.0, now=now + 25 * 3600)
        assert not resweep_due(store, 0.0, now=now + 99 * 86400)  # 0: never by itself
        (late,) = archive.release(1, at_mjd=cursor - 10.0)
        archive.add_exposure(at_mjd=cursor - 40.0)  # older than resweep_days: --all finds it
        assert poll(store, client, section, now=now).new == 0
        sweep = resweep(store, client, section, now=now + 60)
        assert sweep is not None and sweep.ok and sweep.kind == "resweep"
        assert (sweep.new, sweep.listed, sweep.recorded) == (1, 1, 1)
        assert sweep.window == (cursor - 30.0, cursor)
        assert store.get(late.dataset)["state"] == "new" and store.cursor() == cursor
        assert not resweep_due(store, 24.0, now=now + 3600)  # counted from this resweep
        everything = resweep(store, client, section, everything=True, now=now + 120)
        assert everything is not None and everything.new == 1
        total = len(archive.exposures())
        assert everything.listed == everything.recorded == total
        assert store.cursor() == cursor
        assert store.count_released(mjd(now) - 99999, mjd(now)) == total


def test_the_intent_criterion_reaches_mast(mast: tuple[Archive, MastStandin, MastClient]
                                           ) -> None:
    archive, standin, client = mast
    cal = archive.add_exposure(at_mjd=60050.0, intent="calibration")
    found = {o.obs_id for o in client.observations(60000.0, 60100.0)}
    assert cal.obs_id not in found and len(found) >= 30
    params = [r.params for r in standin.log if r.service == "Mast.Caom.Filtered"][-1]
    assert {"paramName": "intentType", "values": ["science"]} in params["filters"]
    everything = MastClient(standin.url, collection="HST", instrument="WFC3/IR", timeout_s=20)
    try:
        assert cal.obs_id in {o.obs_id for o in everything.observations(60000.0, 60100.0)}
    finally:
        everything.close()


def test_mast_errors_name_the_path_lookup() -> None:
    client = MastClient("http://127.0.0.1:9", collection="HST", instrument="WFC3/IR",
                        timeout_s=2, retries=0)
    try:
        with pytest.raises(MastError, match=r"path lookup .*could not connect"):
            client.cloud_paths(["mast:HST/product/icxe15wwq_flt.fits"])
    finally:
        client.close()
