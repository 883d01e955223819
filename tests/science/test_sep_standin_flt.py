"""The synthetic WFC3/IR FLT generator (standin.flt)."""

from __future__ import annotations

import io
import math
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from standin.flt import (
    BROKEN_KINDS,
    DQ,
    FILTERS,
    TRUTH_DTYPE,
    make_broken_flt,
    make_drz,
    make_flt,
    synthesize_flt,
)


def test_deterministic_per_seed(exposure) -> None:
    again, truth = make_flt(exposure.obs_id, seed=11)
    assert again == exposure.data
    np.testing.assert_array_equal(truth, exposure.truth)
    other, _ = make_flt(exposure.obs_id, seed=99)
    assert other != exposure.data


def test_structure_and_keywords(exposure) -> None:
    with fits.open(io.BytesIO(exposure.data)) as hdul:
        hdul.verify("exception")
        names = [(h.name, h.ver) for h in hdul[1:]]
        assert names == [("SCI", 1), ("ERR", 1), ("DQ", 1), ("SAMP", 1), ("TIME", 1)]
        p = hdul[0].header
        assert (p["TELESCOP"], p["INSTRUME"], p["DETECTOR"]) == ("HST", "WFC3", "IR")
        assert p["ROOTNAME"] == exposure.obs_id and p["FILTER"] in FILTERS
        assert p["EXPTIME"] > 0 and p["DATE-OBS"] and p["NEXTEND"] == 5
        f = FILTERS[p["FILTER"]]
        assert p["PHOTFLAM"] == f.photflam and p["PHOTPLAM"] == f.photplam
        assert p["PHOTFNU"] == pytest.approx(f.photfnu) and p["PHOTZPT"] == -21.1
        for name, dtype in (("SCI", ">f4"), ("ERR", ">f4"), ("DQ", ">i2"), ("SAMP", ">i2"),
                            ("TIME", ">f4")):
            assert hdul[name].data.shape == (1014, 1014)
            assert hdul[name].data.dtype == np.dtype(dtype)
        sci = hdul["SCI"].header
        assert sci["BUNIT"] == "ELECTRONS/S" and sci["CTYPE1"] == "RA---TAN-SIP"
        w = WCS(sci)
        assert w.sip is not None
        scale = math.sqrt(abs(np.linalg.det(w.wcs.cd))) * 3600
        assert scale == pytest.approx(0.1283, abs=0.002)


def test_noise_matches_err(noise_exposures) -> None:
    with fits.open(io.BytesIO(noise_exposures[0].data)) as hdul:
        sci, err, dq = (hdul[n].data.astype(np.float64) for n in ("SCI", "ERR", "DQ"))
    patch = (slice(300, 420), slice(300, 420))
    good = dq[patch] == 0
    pull = (sci[patch] - np.median(sci[patch][good])) / err[patch]
    assert np.std(pull[good]) == pytest.approx(1.0, abs=0.05)


def test_truth_is_consistent(exposure) -> None:
    t = exposure.truth
    assert t.dtype == TRUTH_DTYPE
    assert set(np.unique(t["kind"])) == {"star", "galaxy"}
    assert np.all((t["x"] > 10) & (t["x"] < 1005) & (t["y"] > 10) & (t["y"] < 1005))
    assert t["snr"].min() >= 3 and t["snr"].max() <= 500 and np.all(t["flux"] > 0)
    with fits.open(io.BytesIO(exposure.data)) as hdul:
        ra, dec = WCS(hdul["SCI"].header).all_pix2world(t["x"], t["y"], 1)
        exptime = hdul[0].header["EXPTIME"]
        zp = FILTERS[hdul[0].header["FILTER"]].zeropoint_ab
    np.testing.assert_allclose(ra, t["ra"], atol=1e-10)
    np.testing.assert_allclose(dec, t["dec"], atol=1e-10)
    np.testing.assert_allclose(t["mag"], zp - 2.5 * np.log10(t["flux"]), atol=1e-9)
    # The noiseless model holds exactly the injected flux.
    assert exposure.model.sum() == pytest.approx(t["flux"].sum(), rel=1e-4)
    assert exptime > 0


def test_detector_defects(exposure) -> None:
    with fits.open(io.BytesIO(exposure.data)) as hdul:
        dq = hdul["DQ"].data.astype(np.int64)
    for bit in (DQ.BAD_DETECTOR, DQ.HOT, DQ.UNSTABLE, DQ.CR_RAMP, DQ.BAD_FLAT):
        assert np.count_nonzero(dq & bit) > 0, bit


def test_saturated_cores_keep_their_values() -> None:
    """Stars past full well are flagged 256 with fewer SAMP reads, their values intact."""
    flt = synthesize_flt("icxe15wwq", seed=4, n_stars=20, n_galaxies=0,
                         snr_range=(1000, 3000))
    data, model = flt.data, flt.model
    with fits.open(io.BytesIO(data)) as hdul:
        dq = hdul["DQ"].data.astype(np.int64)
        samp, sci, time_ = hdul["SAMP"].data, hdul["SCI"].data, hdul["TIME"].data
    sat = (dq & DQ.SATURATED) != 0
    assert sat.sum() > 20
    assert np.all(samp[sat] < samp.max()) and np.all(time_[sat] < time_.max())
    np.testing.assert_allclose(sci[sat], model[sat], rtol=0.05)


def test_drz_layout(drz_exposure) -> None:
    with fits.open(io.BytesIO(drz_exposure.data)) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "WHT", "CTX"]
        assert "A_ORDER" not in hdul["SCI"].header


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_broken_variants_are_broken(kind: str) -> None:
    data = make_broken_flt(kind)
    if kind in ("all-nan", "all-zero", "wrong-shape", "cube", "no-sci"):
        with fits.open(io.BytesIO(data)) as hdul:  # structurally valid FITS
            names = [h.name for h in hdul]
            if kind == "no-sci":
                assert "SCI" not in names
            elif kind == "all-nan":
                assert np.all(np.isnan(hdul["SCI"].data))
            elif kind == "all-zero":
                assert not np.any(hdul["SCI"].data)
            elif kind == "cube":
                assert hdul["SCI"].data.ndim == 3
            else:
                assert hdul["SCI"].data.shape != hdul["ERR"].data.shape
    elif kind == "empty":
        assert data == b""
    elif kind == "truncated":
        assert 0 < len(data) < 8_000_000
    else:
        assert not data.startswith(b"SIMPLE  =") or kind == "corrupt-header"


def test_make_broken_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError):
        make_broken_flt("melted")


def test_fast_enough() -> None:
    """The demo and tests make many images: ~0.15-0.2 s each on a developer machine; the
    bound here is loose so a loaded CI runner does not fail it."""
    make_flt("icxe15wwq", seed=1)
    times = []
    for seed in range(3):
        t0 = time.perf_counter()
        make_flt("icxe15wwq", seed=seed)
        times.append(time.perf_counter() - t0)
    assert sorted(times)[1] < 1.0, times


def test_drz_deterministic() -> None:
    a, ta = make_drz("icxe15010", seed=3, n_stars=10, n_galaxies=10)
    b, tb = make_drz("icxe15010", seed=3, n_stars=10, n_galaxies=10)
    assert a == b and np.array_equal(ta, tb)
