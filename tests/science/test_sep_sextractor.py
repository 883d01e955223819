"""lambda_sep against SExtractor (Debian's ``source-extractor``) on the same image: a synthetic
exposure and the real frames of tests/data (issue 12, points 1, 5, 6 and 7).

Settings, masked pixels and the dual-image runs are described in sextractor.py; the
real-frame numbers asserted here are the ones docs/CATALOG.md shows (tests/science/figures.py
prints them).
"""

from __future__ import annotations

from pathlib import Path

import figures
import numpy as np
import pytest
import realframes
import sextractor
from astropy.table import Table

from lambda_sep.extract import Extraction, extract


@pytest.fixture(scope="module")
def both(exposure, tmp_path_factory: pytest.TempPathFactory) -> tuple[Extraction, Table]:
    work = tmp_path_factory.mktemp("sextractor")
    return (extract(exposure.read(), figures.COMPARE),
            sextractor.run(exposure.read(), figures.COMPARE, work))


def _bright_pairs(ours: Extraction, sx: Table) -> tuple[np.ndarray, np.ndarray]:
    c = ours.columns
    j, dist = sextractor.nearest(c["x_bary"], c["y_bary"], sx)
    snr = np.asarray(sx["FLUX_AUTO"])[j] / np.asarray(sx["FLUXERR_AUTO"])[j]
    ok = (dist < 1.0) & (snr > 50) & (c["flags"] == 0) & (np.asarray(sx["FLAGS"])[j] == 0)
    ok &= (c["flags_auto"] & 0xF0) == 0  # no masked or truncated aperture pixels
    return np.flatnonzero(ok), j[ok]


def test_same_detections(both) -> None:
    ours, sx = both
    assert abs(ours.count - len(sx)) <= 0.02 * len(sx)
    d = np.hypot(ours.columns["x_bary"][:, None] - sx["X_IMAGE"][None, :],
                 ours.columns["y_bary"][:, None] - sx["Y_IMAGE"][None, :])
    assert (d.min(0) < 1.0).mean() >= 0.97


def test_positions_match(both) -> None:
    ours, sx = both
    i, j = _bright_pairs(ours, sx)
    assert len(i) >= 40
    c = ours.columns
    win = np.hypot(c["x"][i] - np.asarray(sx["XWIN_IMAGE"])[j],
                   c["y"][i] - np.asarray(sx["YWIN_IMAGE"])[j])
    bary = np.hypot(c["x_bary"][i] - np.asarray(sx["X_IMAGE"])[j],
                    c["y_bary"][i] - np.asarray(sx["Y_IMAGE"])[j])
    assert np.median(win) <= 0.05, np.median(win)
    assert np.median(bary) <= 0.05, np.median(bary)


def test_auto_fluxes_match(both) -> None:
    ours, sx = both
    i, j = _bright_pairs(ours, sx)
    c = ours.columns
    ratio = c["flux_auto"][i] / np.asarray(sx["FLUX_AUTO"])[j]
    assert abs(np.median(ratio) - 1) <= 0.01, np.median(ratio)
    kron = c["kron_radius"][i] / np.asarray(sx["KRON_RADIUS"])[j]
    assert abs(np.median(kron) - 1) <= 0.01
    err = c["fluxerr_auto"][i] / np.asarray(sx["FLUXERR_AUTO"])[j]
    assert abs(np.median(err) - 1) <= 0.01


def test_aperture_fluxes_and_radii_match(both) -> None:
    ours, sx = both
    i, j = _bright_pairs(ours, sx)
    c = ours.columns
    aper = c["flux_aper"][i] / np.asarray(sx["FLUX_APER"])[j]
    np.testing.assert_allclose(np.median(aper, axis=0), 1.0, atol=0.01)
    rh = c["flux_radius"][i] / np.asarray(sx["FLUX_RADIUS"])[j]
    assert abs(np.median(rh) - 1) <= 0.01


# ------------------------------------------------------------------------- real frames


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, figures.FrameFigures]:
    """Every figure of every real science frame (extractions and SExtractor runs)."""
    work = tmp_path_factory.mktemp("real")
    return {name: figures.measure(name, work) for name in realframes.SCIENCE}


@pytest.mark.parametrize("name", realframes.SCIENCE)
def test_real_frame_detections_match_sextractor(real, name: str) -> None:
    f = real[name]
    assert f.matched >= 0.98, f
    assert abs(f.ours - f.theirs) <= max(1, 0.03 * f.theirs), f
    assert f.bright >= 1


@pytest.mark.parametrize("name", realframes.SCIENCE)
def test_negated_frame_purity_at_the_defaults(real, name: str) -> None:
    """Issue 12 point 6: detections on -SCI (same noise, DQ, header) are <= 1% of the
    detections on the frame, at the default parameters (at the old thresh = 3 SEP's own
    test frame gave 1 of 77)."""
    f = real[name]
    assert f.detections >= 1 and f.negated <= 0.01 * f.detections, f


@pytest.mark.parametrize("name", realframes.SCIENCE)
def test_real_frame_windowed_positions_match_xwin(real, name: str) -> None:
    """Issue 12 point 1: median |position - XWIN| <= 0.02 px at S/N >= 20. At the defaults
    the windowed step fails for at most 0.5% of the sources (one of 480 on ib6o23rtq: a
    10-pixel source with a masked pixel in its core, whose window runs 3.3 px onto a brighter
    neighbour; its barycentre stays, flagged)."""
    f = real[name]
    assert f.dpos <= 0.02, f
    assert f.detections - f.windowed <= 0.005 * f.detections, f


def test_windowed_positions_kept_beside_masked_pixels(real) -> None:
    """The GJ 1214 star has masked pixels in its window: it keeps its windowed position,
    within 0.02 px of XWIN (the barycentre was 0.15 px off); so do the sources of every
    frame with masked pixels in the window (0.023 px on ib6o21qnq while SEP filled them
    with the window's mean)."""
    f = real["ibxy07p9q"]
    assert f.n_masked_win == 1 and f.dpos_masked <= 0.02, f
    # Over the sources of every frame with masked pixels in the window.
    masked = [real[n] for n in realframes.SCIENCE if real[n].n_masked_win]
    assert sum(f.n_masked_win for f in masked) > 50
    assert max(f.dpos_masked for f in masked) <= 0.02


@pytest.mark.parametrize("name", realframes.SCIENCE)
def test_real_frame_auto_fluxes_match_without_masked_pixels(real, name: str) -> None:
    f = real[name]
    if name in realframes.SUBARRAYS:  # the one bright source has masked pixels
        assert np.isnan(f.dflux)
        return
    assert abs(f.dflux) <= 0.005, f


def test_masked_pixel_photometry_against_blank_and_correct(real) -> None:
    """Issue 12 point 5, as docs/CATALOG.md states it: SEP fills the masked part of an
    aperture with the aperture's mean, which lands above SExtractor's BLANK (masked pixels
    count zero) and, for these compact sources, a little above CORRECT (masked pixels take
    their mirror's value)."""
    rows = [real[n] for n in realframes.SCIENCE]
    assert sum(r.n_masked_auto for r in rows) > 50
    for r in rows:
        assert 0.0 < r.dflux_blank <= 0.09, r
        assert 0.0 <= r.dflux_correct <= 0.06, r
        assert r.dflux_correct <= r.dflux_blank, r


def test_masked_pixels_flagged_to_sextractor(tmp_path: Path) -> None:
    """SExtractor's view: masked pixels sit at the background with the median noise and
    carry the FLAG_IMAGE, so the GJ 1214 star is detected and flagged (with rms = 1e30 it
    was not detected at all)."""
    store = figures.FileStore(str(tmp_path / "frames"))
    view = sextractor.inputs(figures.read("ibxy07p9q", store), figures.COMPARE)
    assert view.mask.sum() > 500
    assert np.all(view.rms == np.where(view.mask, np.median(view.rms[~view.mask]), view.rms))
    sx = sextractor.run(figures.read("ibxy07p9q", store), figures.COMPARE, tmp_path / "sx")
    star = int(np.argmax(sx["FLUX_AUTO"]))
    assert sx["IMAFLAGS_ISO"][star] == 1 and sx["NIMAFLAGS_ISO"][star] >= 1
