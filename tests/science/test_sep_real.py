"""Extraction on the real frames of tests/data (issue 12): noise maps (point 2), masked
pixels in detection (3) and in apertures (5), the WCS model (8). The comparisons with
SExtractor and the negated frames (points 1, 5, 6, 7) are in test_sep_sextractor.py; the
observing modes (4) in test_sep_handler.py and test_sep_modes.py."""

from __future__ import annotations

import io
from collections.abc import Callable

import figures
import numpy as np
import pytest
import realframes
import sep
from astropy.io import fits

from lambda_sep.extract import MASKED_NOISE, extract, prepare
from lambda_sep.fitsread import Image, ImageError, read_image
from lambda_sep.params import SepParams
from lambda_sep.storage import FileStore

REF = realframes.REF


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FileStore:
    return FileStore(str(tmp_path_factory.mktemp("frames")))


def _image(store: FileStore, key: str, data: bytes) -> Image:
    store.put_atomic(key, data)
    return read_image(store, key, len(data))


def _edited(store: FileStore, name: str, edit: Callable[[fits.HDUList], None], *,
            data: bytes | None = None) -> Image:
    """A real frame (or ``data``) with ``edit(hdul)`` applied to its HDUs."""
    with fits.open(io.BytesIO(data or realframes.frame(name))) as hdul:
        edit(hdul)
        buf = io.BytesIO()
        hdul.writeto(buf)
    return _image(store, f"{name}-edited.fits", buf.getvalue())


# ---------------------------------------------------------------- point 2: the noise map


@pytest.mark.parametrize("name", [*realframes.SCIENCE, "untrimmed"])
def test_noise_is_positive_and_finite_wherever_a_pixel_is_used(store, name: str) -> None:
    img = (_image(store, "u.fits", realframes.untrimmed("ibxy07p9q")) if name == "untrimmed"
           else figures.read(name, store))
    frame = prepare(img, SepParams())
    used = frame.noise[~frame.mask]
    assert used.size and np.all(np.isfinite(used)) and np.all(used > 0)
    assert np.all(frame.noise[frame.mask] == MASKED_NOISE)
    assert np.all(frame.sci[frame.mask] == 0)


@pytest.mark.parametrize("name", realframes.GRIZLI_IMAGING)
def test_unusable_err_is_replaced_and_said(store, name: str) -> None:
    """grizli's quantised FLTs: ERR is 0 on almost every pixel and the sky is 0 e-/s."""
    ex = extract(figures.read(name, store), SepParams())
    assert ex.noise_source == "background rms"
    assert ex.noise_note.startswith("ERR unusable: <= 0 or non-finite on ")
    # The background rms of a sky quantised to 0 is 0: the rounding noise stands in.
    assert "SCI quantised (step 1)" in ex.noise_note and ex.noise_replaced > 500_000
    assert ex.noise_median == pytest.approx(1 / np.sqrt(12), rel=1e-6)
    c = ex.columns
    assert ex.count > 100 and np.all(np.isfinite(c["fluxerr_auto"]))
    # Poisson noise is in (gain = EXPTIME for e-/s): S/N never beats sqrt(electrons).
    exptime = figures.read(name, store).keyword("EXPTIME")
    pos = c["flux_auto"] > 0
    snr = c["flux_auto"][pos] / c["fluxerr_auto"][pos]
    assert np.all(snr <= np.sqrt(c["flux_auto"][pos] * exptime) * 1.0001)
    assert np.nanmin(c["magerr_auto"]) > 0.001


@pytest.mark.parametrize(("edit", "note"), [
    (lambda err: np.full_like(err, 24.0), "ERR unusable: constant (24)"),
    (lambda err: -err, "ERR unusable: <= 0 or non-finite on 100.0%"),
    (np.zeros_like, "ERR unusable: <= 0 or non-finite on 100.0%"),
])
def test_err_planes_that_are_not_noise_maps(store, edit, note: str) -> None:
    def apply(hdul: fits.HDUList) -> None:
        hdul["ERR"].data = edit(hdul["ERR"].data)

    ex = extract(_edited(store, "ibxy07p9q", apply), SepParams())
    assert ex.noise_source == "background rms" and ex.noise_note.startswith(note)
    assert ex.count == 1  # GJ 1214 still found, on the background rms


def test_no_usable_noise_names_the_plane(store) -> None:
    """A float frame whose sky is exactly flat: no ERR, and a background rms of 0."""
    def flatten(hdul: fits.HDUList) -> None:
        sci = hdul["SCI"].data
        hdul["SCI"].data = np.where(sci > np.percentile(sci, 99), sci, 7000.0)

    with pytest.raises(ImageError, match="no usable noise estimate: the background rms of SCI"):
        extract(_edited(store, "sep_image", flatten), SepParams())


@pytest.mark.parametrize(("plane", "expect"), [("DQ", "mostly because of DQ & 4287"),
                                               ("SCI", "mostly because of SCI non-finite")])
def test_no_usable_pixels_names_the_plane(store, plane: str, expect: str) -> None:
    def ruin(hdul: fits.HDUList) -> None:
        if plane == "DQ":
            hdul["DQ"].data[:, 2:] |= 4
        else:
            hdul["SCI"].data[:, 2:] = np.nan

    with pytest.raises(ImageError, match=expect):
        extract(_edited(store, "ibxy07p9q", ruin), SepParams())


# ---------------------------------------------------- point 3: masked pixels in detection


@pytest.mark.parametrize("root", realframes.SUBARRAYS)
def test_reference_pixels_make_no_detections(store, root: str) -> None:
    """The untrimmed IMA read has a 5-pixel border of reference pixels with ERR = 0
    (masked). They made a 224-pixel 'object' with NaN flux; now the untrimmed frame gives
    the trimmed frame's sources, even with the border set to wild values."""
    trimmed = extract(figures.read(root, store), SepParams())

    def wild(hdul: fits.HDUList) -> None:
        border = np.ones(hdul["SCI"].data.shape, bool)
        border[REF:-REF, REF:-REF] = False
        hdul["SCI"].data[border] = 1e4

    untrimmed = realframes.untrimmed(root)
    for img in (_image(store, f"{root}-u.fits", untrimmed),
                _edited(store, root, wild, data=untrimmed)):
        ex = extract(img, SepParams())
        assert ex.count == trimmed.count
        np.testing.assert_allclose(ex.columns["x"] - REF, trimmed.columns["x"], atol=0.05)
        np.testing.assert_allclose(ex.columns["y"] - REF, trimmed.columns["y"], atol=0.05)
        assert np.all(np.isfinite(ex.columns["flux_auto"]))


def _star(store: FileStore) -> tuple[int, int]:
    """The pixel of GJ 1214's peak in the trimmed ibxy07p9q (0-based x, y)."""
    sci = figures.read("ibxy07p9q", store).sci
    y, x = np.unravel_index(int(np.argmax(sci)), sci.shape)
    return int(x), int(y)


def _mask_box(store: FileStore, half: int, *, keep_peak: bool = False) -> Image:
    """ibxy07p9q with DQ 4 (bad detector pixel) over a box of half-width ``half`` around
    the star's peak, the peak pixel itself left unmasked if ``keep_peak``."""
    x, y = _star(store)

    def apply(hdul: fits.HDUList) -> None:
        dq = hdul["DQ"].data
        dq[y - half : y + half + 1, x - half : x + half + 1] |= 4
        if keep_peak:
            dq[y, x] &= ~4

    return _edited(store, "ibxy07p9q", apply)


def test_a_detection_made_mostly_of_masked_pixels_is_dropped(store) -> None:
    """The star masked over 9x9 pixels but for its peak: the matched filter sees the peak
    and the wings, and the masked pixels between join the isophote. Such a 'source' is
    mostly masked pixels and is not catalogued."""
    ex = extract(_mask_box(store, 4, keep_peak=True), SepParams())
    assert ex.count == 0 and ex.dropped_masked == 1


# ---------------------------------------------------- point 5: masked pixels in apertures


@pytest.mark.parametrize("name", realframes.SCIENCE)
def test_every_aperture_with_masked_pixels_is_flagged_with_its_fraction(store, name: str
                                                                        ) -> None:
    c = extract(figures.read(name, store), SepParams()).columns
    for flags, frac in ((c["flags_auto"], c["maskfrac_auto"]),
                        (c["flags_aper"], c["maskfrac_aper"])):
        has = (flags & sep.APER_HASMASKED) != 0
        np.testing.assert_array_equal(has, frac > 0)
        assert np.all((frac >= 0) & (frac <= 1))


def _masked_fraction_by_sampling(mask: np.ndarray, x: float, y: float, r: float) -> float:
    """The masked share of a circle, from 5x5 samples per pixel (SEP's subpix=5)."""
    iy, ix = np.mgrid[int(y - r) - 1 : int(y + r) + 2, int(x - r) - 1 : int(x + r) + 2]
    off = (np.arange(5) + 0.5) / 5 - 0.5
    sx = ix[..., None, None] + off[None, None, None, :] - x
    sy = iy[..., None, None] + off[None, None, :, None] - y
    inside = np.hypot(sx, sy) < r
    return float((inside * mask[iy, ix][..., None, None]).sum() / inside.sum())


def test_masked_fraction_is_the_masked_area(store) -> None:
    """GJ 1214 with a 5x5 masked box off its centre: the fraction SEP's sums give is the
    masked share of each circular aperture (no neighbours in this frame)."""
    x, y = _star(store)

    def apply(hdul: fits.HDUList) -> None:
        hdul["DQ"].data[y + 1 : y + 6, x - 2 : x + 3] |= 4

    img = _edited(store, "ibxy07p9q", apply)
    mask = (img.dq & SepParams().dq_mask) != 0
    c = extract(img, SepParams()).columns
    assert len(c["x"]) == 1
    for j, r in enumerate(SepParams().aper_radii):
        expect = _masked_fraction_by_sampling(mask, c["x_bary"][0] - 1, c["y_bary"][0] - 1, r)
        assert c["maskfrac_aper"][0, j] == pytest.approx(expect, abs=0.01), r
    assert 0.05 < c["maskfrac_aper"][0, 1] < 0.5


def test_fully_masked_aperture(store) -> None:
    """The star's core masked (a 7x7 box), its wings not: the 2-pixel aperture holds only
    masked pixels. Its flux is NaN (SEP divides by the unmasked area) and its fraction 1."""
    ex = extract(_mask_box(store, 3), SepParams())
    c = ex.columns
    assert ex.count == 1
    assert c["maskfrac_aper"][0, 0] == 1.0 and np.isnan(c["flux_aper"][0, 0])
    assert np.isnan(c["mag_aper"][0, 0])
    assert 0 < c["maskfrac_auto"][0] < 1 and np.isfinite(c["flux_auto"][0])


# ---------------------------------------------------------------- point 8: the WCS model


def test_wcs_model_recorded(store, extractions) -> None:
    _, synthetic = extractions[0]
    assert synthetic.wcs_model == "TAN-SIP" and synthetic.wcs_ok
    for name in (*realframes.SUBARRAYS, *realframes.GRIZLI_IMAGING):
        img = figures.read(name, store)
        ex = extract(img, SepParams())
        assert ex.wcs_model == "TAN" and ex.wcs_ok, name  # these headers carry no SIP
        assert np.all(np.isfinite(ex.columns["ra"]))
    ex = extract(figures.read("sep_image", store), SepParams())
    assert ex.wcs_model == "" and not ex.wcs_ok
    assert np.all(np.isnan(ex.columns["ra"]))
