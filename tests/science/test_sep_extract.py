"""The catalog science, measured against the injected truth of synthetic exposures.

Truth comparisons and why:

* completeness at S/N >= 10 and position accuracy use every injected source;
* the AUTO flux bias uses stars: a compact PSF puts >99% of its light inside the Kron
  aperture, so AUTO should recover the total flux. For galaxies the Kron aperture misses the
  profile's wings by design (a few per cent for Sersic n ~ 1-2.5), so galaxies are checked
  twice: their AUTO/total ratio sits in the expected range below 1, and their AUTO flux
  matches the noiseless model's flux inside the very same aperture (no measurement bias).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.wcs import WCS

from lambda_sep.extract import FLAG_CIRCULAR, extract, gaussian_kernel, zeropoint
from lambda_sep.fitsread import ImageError, read_image
from lambda_sep.params import DEFAULT_DQ_MASK, SepParams
from lambda_sep.storage import open_store
from standin.flt import DQ, FILTERS, make_broken_flt, make_flt

MATCH_RADIUS = 1.5  # px


def match(columns: dict, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each truth source: index of the nearest detection and its distance (px)."""
    d = np.hypot(columns["x"][:, None] - truth["x"][None, :],
                 columns["y"][:, None] - truth["y"][None, :])
    if d.size == 0:
        return np.zeros(len(truth), int), np.full(len(truth), np.inf)
    return d.argmin(0), d.min(0)


def test_completeness_at_snr_10(exposures, extractions) -> None:
    found = total = 0
    for exp, (_, ex) in zip(exposures, extractions, strict=True):
        _, dist = match(ex.columns, exp.truth)
        sel = exp.truth["snr"] >= 10
        found += int((dist[sel] < MATCH_RADIUS).sum())
        total += int(sel.sum())
    assert total > 300
    assert found / total >= 0.95, f"completeness {found}/{total} = {found / total:.3f}"


def test_spurious_detections_on_pure_noise(noise_exposures, extractions) -> None:
    """Detections on a source-free frame with the same noise, as a fraction of the
    detections on the science frame, at the default threshold."""
    for noise, (_, ex) in zip(noise_exposures, extractions, strict=True):
        spurious = extract(noise.read(), SepParams()).count
        assert spurious <= 0.01 * ex.count, f"{spurious} spurious vs {ex.count} detections"


def test_dq_mask_keeps_hot_pixels_out(noise_exposures) -> None:
    """Without the DQ mask the hot pixels of a noise frame become 'sources'."""
    img = noise_exposures[0].read()
    n_hot = int(np.count_nonzero(img.dq & DQ.HOT))
    unmasked = extract(img, SepParams(dq_mask=0))
    assert unmasked.count > 50
    assert np.count_nonzero(unmasked.columns["flags_dq"] & DQ.HOT) > 50
    masked = extract(noise_exposures[0].read(), SepParams())
    assert masked.count < 5 and n_hot > 500
    assert DEFAULT_DQ_MASK & DQ.HOT and not DEFAULT_DQ_MASK & DQ.CR_RAMP


def test_position_rms_at_snr_50(exposures, extractions) -> None:
    offsets = []
    for exp, (_, ex) in zip(exposures, extractions, strict=True):
        _idx, dist = match(ex.columns, exp.truth)
        sel = (exp.truth["snr"] >= 50) & (dist < MATCH_RADIUS)
        assert sel.sum() >= 0.98 * (exp.truth["snr"] >= 50).sum()
        offsets.append(dist[sel])
    d = np.concatenate(offsets)
    rms = math.sqrt(float(np.mean(d**2)))
    assert len(d) > 150
    assert rms <= 0.1, f"position rms {rms:.3f} px over {len(d)} sources"


def test_star_auto_flux_bias_at_snr_50(exposures, extractions) -> None:
    ratios = []
    for exp, (_, ex) in zip(exposures, extractions, strict=True):
        idx, dist = match(ex.columns, exp.truth)
        t = exp.truth
        sel = (t["kind"] == "star") & (t["snr"] >= 50) & (dist < MATCH_RADIUS)
        clean = (ex.columns["flags_auto"][idx] & (sep.APER_HASMASKED | sep.APER_TRUNC)) == 0
        sel &= clean
        ratios.append(ex.columns["flux_auto"][idx[sel]] / t["flux"][sel])
    r = np.concatenate(ratios)
    assert len(r) > 60
    assert abs(np.median(r) - 1) <= 0.02, f"median AUTO/true {np.median(r):.4f}"
    assert abs(np.mean(r) - 1) <= 0.02, f"mean AUTO/true {np.mean(r):.4f}"


def test_galaxy_auto_flux(exposures, extractions) -> None:
    """Galaxies: AUTO misses the outer wings (expected), and has no bias for what is inside."""
    total, inside = [], []
    for exp, (_img, ex) in zip(exposures, extractions, strict=True):
        idx, dist = match(ex.columns, exp.truth)
        t, c = exp.truth, ex.columns
        sel = (t["kind"] == "galaxy") & (t["snr"] >= 50) & (dist < MATCH_RADIUS)
        sel &= (c["flags_auto"][idx] & (sep.APER_HASMASKED | sep.APER_TRUNC)) == 0
        sel &= c["kron_radius"][idx] > 0
        j = idx[sel]
        total.append(c["flux_auto"][j] / t["flux"][sel])
        # The noiseless model summed over the very aperture AUTO used (whole pixels whose
        # centres fall inside, as SExtractor does).
        model_in, _, _ = sep.sum_ellipse(
            exp.model.astype(np.float64), c["x_bary"][j] - 1.0, c["y_bary"][j] - 1.0,
            c["a"][j].astype(np.float64), c["b"][j].astype(np.float64),
            np.radians(c["theta"][j].astype(np.float64)), c["kron_radius"][j].astype(
                np.float64), subpix=1)
        inside.append(c["flux_auto"][j] / model_in)
    total_r, inside_r = np.concatenate(total), np.concatenate(inside)
    assert len(total_r) > 40
    assert 0.88 <= np.median(total_r) < 0.995, f"AUTO/total {np.median(total_r):.3f}"
    assert abs(np.median(inside_r) - 1) <= 0.02, f"AUTO/model-in-aperture {np.median(inside_r)}"


def test_flux_errors_are_calibrated(exposures, extractions) -> None:
    """(AUTO - truth in aperture) / fluxerr_auto scatters like a unit normal for stars."""
    pulls = []
    for exp, (_, ex) in zip(exposures, extractions, strict=True):
        idx, dist = match(ex.columns, exp.truth)
        t, c = exp.truth, ex.columns
        sel = (t["kind"] == "star") & (dist < MATCH_RADIUS) & (t["snr"] >= 5)
        sel &= (c["flags_auto"][idx] & sep.APER_HASMASKED) == 0
        j = idx[sel]
        model_in, _, _ = sep.sum_ellipse(
            exp.model.astype(np.float64), c["x_bary"][j] - 1.0, c["y_bary"][j] - 1.0,
            c["a"][j].astype(np.float64), c["b"][j].astype(np.float64),
            np.radians(c["theta"][j].astype(np.float64)),
            c["kron_radius"][j].astype(np.float64), subpix=1)
        pulls.append((c["flux_auto"][j] - model_in) / c["fluxerr_auto"][j])
    p = np.concatenate(pulls)
    assert len(p) > 100
    # Robust sigma (the centroid-defined aperture adds a little scatter of its own).
    sigma = 1.4826 * np.median(np.abs(p - np.median(p)))
    assert 0.7 <= sigma <= 1.4, f"pull sigma {sigma:.2f}"


def test_sky_coordinates_use_sip(exposure, extractions) -> None:
    img, ex = extractions[0]
    idx, dist = match(ex.columns, exposure.truth)
    sel = (exposure.truth["snr"] >= 20) & (dist < MATCH_RADIUS)
    t, c = exposure.truth[sel], ex.columns
    cosd = np.cos(np.radians(t["dec"]))
    sep_mas = np.hypot((c["ra"][idx[sel]] - t["ra"]) * cosd, c["dec"][idx[sel]] - t["dec"]) * 3.6e6
    assert np.median(sep_mas) < 10.0, f"median {np.median(sep_mas):.1f} mas"
    # The same pixels through the linear WCS alone land far off: SIP was really applied.
    header = img.sci_header.copy()
    for k in list(header):
        if k.startswith(("A_", "B_")):
            del header[k]
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    ra, dec = WCS(header).all_pix2world(c["x"][idx[sel]], c["y"][idx[sel]], 1)
    lin_mas = np.hypot((ra - t["ra"]) * cosd, dec - t["dec"]) * 3.6e6
    assert np.median(lin_mas) > 20 * np.median(sep_mas)


def test_magnitudes(extractions) -> None:
    _img, ex = extractions[0]
    c = ex.columns
    f160w = FILTERS["F160W"]
    assert ex.zeropoint == pytest.approx(f160w.zeropoint_ab, abs=1e-9)
    assert ex.zeropoint == pytest.approx(25.946, abs=0.002)  # WFC3/IR F160W AB zero point
    pos = c["flux_auto"] > 0
    np.testing.assert_allclose(c["mag_auto"][pos],
                               ex.zeropoint - 2.5 * np.log10(c["flux_auto"][pos]), atol=2e-5)
    np.testing.assert_allclose(c["magerr_auto"][pos],
                               1.0857362 * c["fluxerr_auto"][pos] / c["flux_auto"][pos],
                               rtol=1e-4)
    assert np.all(np.isnan(c["mag_auto"][~pos]))
    assert c["mag_aper"].shape == (ex.count, len(SepParams().aper_radii))


def test_zeropoint_from_photfnu(extractions) -> None:
    img, _ = extractions[0]
    flam_zp, src = zeropoint(img)
    assert src == "PHOTFLAM,PHOTPLAM"
    primary = img.primary.copy()
    del primary["PHOTFLAM"]
    img.primary, saved = primary, img.primary
    try:
        fnu_zp, src = zeropoint(img)
    finally:
        img.primary = saved
    assert src == "PHOTFNU"
    assert fnu_zp == pytest.approx(flam_zp, abs=1e-3)  # the two definitions agree


def test_drz_extraction(drz_exposure) -> None:
    ex = extract(drz_exposure.read(), SepParams())
    assert ex.noise_source == "WHT"
    _, dist = match(ex.columns, drz_exposure.truth)
    sel = (drz_exposure.truth["snr"] >= 10) & (drz_exposure.truth["x"] > 12)
    assert (dist[sel] < MATCH_RADIUS).mean() >= 0.95
    assert np.all(np.isfinite(ex.columns["ra"]))


@pytest.mark.parametrize(("kind", "message"), [("all-nan", "no finite pixels"),
                                               ("all-zero", "constant")])
def test_unusable_images(kind: str, message: str, tmp_path) -> None:
    data = make_broken_flt(kind)
    store = open_store(f"file://{tmp_path}")
    store.put_atomic("x.fits", data)
    with pytest.raises(ImageError, match=message):
        extract(read_image(store, "x.fits", len(data)), SepParams())


def test_mostly_masked_image_is_refused(exposure) -> None:
    img = exposure.read()
    img.dq[:, :1010] |= DQ.BAD_DETECTOR
    with pytest.raises(ImageError, match="usable"):
        extract(img, SepParams())


def test_dense_field_needs_and_gets_a_big_pixel_stack(tmp_path) -> None:
    data, _truth = make_flt("icxe15wwq", seed=5, n_stars=1500, n_galaxies=600, min_sep=2.0,
                           snr_range=(20, 2000))
    store = open_store(f"file://{tmp_path}")
    store.put_atomic("d.fits", data)
    ex = extract(read_image(store, "d.fits", len(data)), SepParams())
    assert ex.count > 1000  # crowded: 2100 injected 2+ px apart, many blend
    with pytest.raises(ImageError, match="pixel"):
        extract(read_image(store, "d.fits", len(data)), SepParams(pixstack=10_000))


def test_gaussian_kernel() -> None:
    k = gaussian_kernel(2.0, 5)
    assert k.shape == (5, 5) and k[2, 2] == 1.0
    # Half maximum one FWHM apart: value at +-1 px of a FWHM-2 Gaussian is 0.5.
    assert k[2, 1] == pytest.approx(0.5, rel=1e-6)
    assert gaussian_kernel(0.0, 5) is None


# ---------------------------------------------------------------------------- SepParams


def test_params_defaults_and_roundtrip() -> None:
    p = SepParams()
    assert p.kron_factor == 2.5 and p.kron_min_radius == 3.5
    assert SepParams.from_dict(p.to_dict()) == p
    assert SepParams.from_dict(None) == p
    assert SepParams.from_dict({"aper_radii": [1, 2.5]}).aper_radii == (1.0, 2.5)
    assert set(SepParams.describe()) == set(p.to_dict())
    hash(p)  # frozen


@pytest.mark.parametrize(("d", "key", "expect"), [
    ({"thresh": -1}, "thresh", "> 0"),
    ({"thresh": "3"}, "thresh", "number"),
    ({"thresh": float("nan")}, "thresh", "number"),
    ({"minarea": 2.5}, "minarea", "integer"),
    ({"minarea": True}, "minarea", "integer"),
    ({"filter_type": "gauss"}, "filter_type", "'matched' or 'conv'"),
    ({"filter_size": 4}, "filter_size", "odd"),
    ({"clean": 1}, "clean", "true or false"),
    ({"deblend_cont": 2}, "deblend_cont", "[0, 1]"),
    ({"aper_radii": []}, "aper_radii", "radii"),
    ({"aper_radii": [1, -2]}, "aper_radii", "radii"),
    ({"dq_mask": -1}, "dq_mask", "integer"),
    ({"bw": 1}, "bw", "[2, 4096]"),
    ({"thresold": 3}, "thresold", "unknown key"),
])
def test_params_errors_name_key_and_expectation(d: dict, key: str, expect: str) -> None:
    with pytest.raises(ValueError) as info:
        SepParams.from_dict(d)
    msg = str(info.value)
    assert msg.startswith(key) and expect in msg, msg


def test_params_from_non_mapping() -> None:
    with pytest.raises(ValueError, match="table"):
        SepParams.from_dict([1, 2])  # type: ignore[arg-type]


def test_flt_header_keywords_are_where_real_flts_have_them(exposure) -> None:
    with fits.open(exposure.store.root + "/" + exposure.key) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "DQ", "SAMP", "TIME"]
        assert "PHOTFLAM" in hdul[0].header and "PHOTFLAM" not in hdul["SCI"].header
        assert hdul["SCI"].header["BUNIT"] == "ELECTRONS/S"
        assert hdul["DQ"].data.dtype.kind == "i" and hdul["SAMP"].data.dtype == ">i2"


def test_parameter_variants(exposure) -> None:
    plain = extract(exposure.read(), SepParams(windowed=False, mask_neighbours=False))
    np.testing.assert_array_equal(plain.columns["x"], plain.columns["x_bary"])
    circ = extract(exposure.read(), SepParams(auto_min_diameter=12.0))
    c = circ.columns
    used = (c["flags_auto"] & FLAG_CIRCULAR) != 0
    assert used.any() and not used.all()
    assert np.all(c["kron_radius"][used] == 0)
    # A circle of 6 px radius holds nearly all of a compact source: fluxes stay close.
    d = np.hypot(c["x_bary"][:, None] - plain.columns["x_bary"][None, :],
                 c["y_bary"][:, None] - plain.columns["y_bary"][None, :])
    j = d.argmin(1)
    bright = used & (c["flux_auto"] / c["fluxerr_auto"] > 100)
    ratio = c["flux_auto"][bright] / plain.columns["flux_auto"][j[bright]]
    assert abs(np.median(ratio) - 1) < 0.03
