"""The synthetic WFC3/IR archive model: shapes, determinism, releases, planted entries."""

from __future__ import annotations

import json
import re
import threading

import pytest

from lambda_sep.contract import archive_key
from standin.archive import (
    BAD_KINDS,
    WFC3IR_FIRST_MJD,
    Archive,
    FilterError,
)

EXPOSURE_ID = re.compile(r"^i[a-z][0-9a-z]{2}[0-9a-z]{2}[0-9a-z]{2}q$")
ASSOCIATION_ID = re.compile(r"^i[a-z][0-9a-z]{2}[0-9a-z]{2}0[0-9a-z]0$")


def _rows(archive: Archive) -> list[dict]:
    sel = archive.select_observations([])
    return [json.loads(r) for r in sel.encode()]


def test_same_seed_same_archive_other_seed_other_archive() -> None:
    a, b, c = Archive(500, seed=3), Archive(500, seed=3), Archive(500, seed=4)
    assert _rows(a) == _rows(b)
    assert a.observation_ids() != c.observation_ids()


def test_counts_ids_and_grouping(archive: Archive) -> None:
    rows = _rows(archive)
    exposures = [r for r in rows if r["calib_level"] == 2]
    associations = [r for r in rows if r["calib_level"] == 3]
    assert len(exposures) == archive.n_exposures == 3000
    assert len(associations) == archive.n_associations > 100
    assert len(rows) == archive.n_observations == len(exposures) + len(associations)
    assert all(EXPOSURE_ID.match(r["obs_id"]) for r in exposures)
    assert all(ASSOCIATION_ID.match(r["obs_id"]) for r in associations)
    assert len({r["obs_id"] for r in rows}) == len(rows)
    assert len({r["obsid"] for r in rows}) == len(rows)
    assert all(r["obsid"].isdigit() for r in rows)
    # Most WFC3/IR exposures belong to an association, not all.
    members = [e for e in archive.exposures() if e.association is not None]
    assert 0.6 < len(members) / archive.n_exposures < 0.95
    # A member shares program and visit (first 6 characters) with its association.
    assert all(e.dataset[:6] == e.association[:6] for e in members)


def test_rows_carry_every_field_of_the_recorded_answer(archive: Archive) -> None:
    recorded = {"dataproduct_type", "obs_collection", "instrument_name", "project", "filters",
                "wavelength_region", "target_name", "target_classification", "obs_id",
                "s_ra", "s_dec", "proposal_id", "proposal_pi", "calib_level", "t_min",
                "t_max", "t_exptime", "em_min", "em_max", "obs_title", "t_obs_release",
                "s_region", "jpegURL", "dataURL", "obsid", "objID"}
    row = _rows(archive)[0]
    assert recorded <= set(row)
    assert row["obs_collection"] == "HST"
    assert row["instrument_name"] == "WFC3/IR"
    assert row["dataproduct_type"] == "image"
    assert row["filters"].startswith("F") and row["filters"][-1] in "WMN"
    assert row["t_min"] < row["t_max"] <= row["t_obs_release"]
    assert row["s_region"].startswith("POLYGON ICRS ")


def test_release_dates_span_the_range_and_start_after_wfc3_was_installed(
    archive: Archive,
) -> None:
    rows = _rows(archive)
    releases = [r["t_obs_release"] for r in rows]
    assert releases == sorted(releases)  # MAST answers in a stable order
    assert archive.start_mjd <= releases[0] and releases[-1] <= archive.end_mjd
    assert min(r["t_min"] for r in rows) >= WFC3IR_FIRST_MJD - 1
    # Spread over the whole span, not bunched: every ~2-year slice holds exposures.
    span = archive.end_mjd - archive.start_mjd
    for k in range(8):
        lo = archive.start_mjd + k * span / 8
        assert archive.exposures(lo, lo + span / 8), f"no releases in slice {k}"


def test_flt_keys_one_per_exposure(archive: Archive) -> None:
    keys = list(archive.flt_keys())
    assert len(keys) == archive.n_exposures
    assert len({k for _, k in keys}) == len(keys)
    dataset, key = keys[0]
    assert key == f"hst/public/{dataset[:4]}/{dataset}/{dataset}_flt.fits"


def test_association_products_include_every_member(archive: Archive) -> None:
    exp = next(e for e in archive.exposures() if e.association is not None)
    asn_row = json.loads(archive.select_observations(
        [{"paramName": "obs_id", "values": [exp.association]}]).encode()[0])
    products = [json.loads(r) for r in archive.select_products([asn_row["obsid"]]).encode()]
    names = {p["productFilename"] for p in products}
    members = [e for e in archive.exposures() if e.association == exp.association]
    assert {f"{m.dataset}_flt.fits" for m in members} <= names
    assert f"{exp.association}_asn.fits" in names and f"{exp.association}_drz.fits" in names
    assert {p["parent_obsid"] for p in products} == {asn_row["obsid"]}
    member_flt = next(p for p in products if p["productFilename"] == f"{exp.dataset}_flt.fits")
    assert member_flt["obsID"] == exp.obsid and member_flt["obs_id"] == exp.obs_id
    assert member_flt["productType"] == "SCIENCE"
    assert member_flt["dataURI"] == f"mast:HST/product/{exp.dataset}_flt.fits"
    assert 16_000_000 < member_flt["size"] < 17_000_000
    # The exposure's own product list has the same FLT, with itself as parent.
    own = [json.loads(r) for r in archive.select_products([exp.obsid]).encode()]
    assert [p["productSubGroupDescription"] for p in own] == \
        ["RAW", "IMA", "FLT", "SPT", "TRL", "JIF", "JIT"]
    assert {p["parent_obsid"] for p in own} == {exp.obsid}


def test_release_adds_exactly_n_exposures_at_the_given_date() -> None:
    a = Archive(200, seed=1)
    before = a.n_exposures
    new = a.release(37, at_mjd=61000.5)
    assert len(new) == 37 and a.n_exposures == before + 37
    assert {e.release for e in new} == {61000.5}
    assert {e.obs_id for e in a.exposures(61000.5, 61000.5)} == {e.obs_id for e in new}
    assert not set(a.observation_ids(None, 61000.4)) & {e.obs_id for e in new}
    assert a.release(0) == []


def test_release_is_thread_safe_against_concurrent_queries() -> None:
    a = Archive(1000, seed=2)
    errors: list[BaseException] = []
    done = threading.Event()

    def query() -> None:
        try:
            while not done.is_set():
                sel = a.select_observations([])
                rows = sel.encode()
                # A query sees one consistent snapshot: all its rows encode.
                assert len(rows) == sel.count
                ids = [json.loads(r)["obsid"] for r in rows[-50:]]
                a.select_products(ids).encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(20):
        a.release(10, at_mjd=61000 + i)
    done.set()
    for t in threads:
        t.join()
    assert not errors
    assert a.n_exposures == 1200
    assert len({k for _, k in a.flt_keys()}) == 1200


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_planted_bad_entries_carry_the_hostile_name(kind: str) -> None:
    a = Archive(50, seed=1)
    entry = a.plant_bad(kind, at_mjd=60000.0)
    sel = a.select_observations([{"paramName": "t_obs_release",
                                  "values": [{"min": 60000.0, "max": 60000.0}]}])
    (row,) = [json.loads(r) for r in sel.encode()]
    assert row["obs_id"] == entry.obs_id == BAD_KINDS[kind]
    products = [json.loads(r) for r in a.select_products([entry.obsid]).encode()]
    flt = [p for p in products if p["productSubGroupDescription"] == "FLT"]
    assert [p["productFilename"] for p in flt] == [entry.flt_filename]
    assert flt[0]["productFilename"].startswith(BAD_KINDS[kind])
    # Good FLT listings for tests/demos leave planted entries out unless asked.
    assert entry.obs_id not in {d for d, _ in a.flt_keys()}
    assert entry.obs_id in {d for d, _ in a.flt_keys(include_planted=True)}
    assert a.planted == [entry]


def test_upper_case_obs_ids_as_older_mast_showed_them() -> None:
    a = Archive(100, seed=1, obs_id_case="upper")
    e = a.exposures()[0]
    assert e.obs_id == e.dataset.upper() and e.key == archive_key(e.dataset)


def test_unsupported_filters_raise_filter_error(archive: Archive) -> None:
    with pytest.raises(FilterError):
        archive.select_observations([{"paramName": "no_such_column", "values": ["x"]}])
    with pytest.raises(FilterError):
        archive.select_observations([{"paramName": "s_region", "values": ["x"]}])
    with pytest.raises(FilterError):
        archive.select_observations([{"paramName": "t_min", "values": ["not a range"]}])


def test_150k_exposures_generate() -> None:
    # How long it takes is benchmarks/bench_mast_standin.py's to say (a shared machine makes
    # a timed test flaky); this checks the archive is whole.
    a = Archive(150_000, seed=1)
    assert a.n_exposures == 150_000
    assert a.n_associations > 20_000
