"""lambda_sep against SExtractor (Debian's ``source-extractor``) on the same image.

Both run with the same settings: the same Gaussian kernel file, threshold, minimum area,
background mesh and filter, deblending, PHOT_AUTOPARAMS, apertures, ERR as a MAP_RMS weight
map whose masked pixels carry an rms above WEIGHT_THRESH, neighbours blanked
(MASK_TYPE BLANK), no cleaning. SEP's filter is set to ``conv``, SExtractor's only filter
(the default ``matched`` filter has no SExtractor equivalent).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from lambda_sep.extract import Extraction, extract, gaussian_kernel
from lambda_sep.params import SepParams

SEXTRACTOR_PARAMS = (
    "NUMBER X_IMAGE Y_IMAGE XWIN_IMAGE YWIN_IMAGE A_IMAGE B_IMAGE THETA_IMAGE KRON_RADIUS "
    "FLUX_AUTO FLUXERR_AUTO FLUX_APER({n}) FLUXERR_APER({n}) FLUX_RADIUS FLAGS ISOAREA_IMAGE"
)


def _sextractor() -> str:
    exe = shutil.which("source-extractor") or shutil.which("sex")
    if exe is None:
        pytest.fail("SExtractor is not installed: install Debian's `source-extractor` package "
                    "(apt-get install source-extractor); CI installs it. This comparison "
                    "must run, it is never skipped.")
    return exe


def _config(p: SepParams, work: Path) -> str:
    return f"""
CATALOG_NAME     {work}/cat.fits
CATALOG_TYPE     FITS_1.0
PARAMETERS_NAME  {work}/default.param
DETECT_TYPE      CCD
DETECT_MINAREA   {p.minarea}
DETECT_THRESH    {p.thresh}
ANALYSIS_THRESH  {p.thresh}
FILTER           Y
FILTER_NAME      {work}/kernel.conv
DEBLEND_NTHRESH  {p.deblend_nthresh}
DEBLEND_MINCONT  {p.deblend_cont}
CLEAN            {"Y" if p.clean else "N"}
CLEAN_PARAM      {p.clean_param}
MASK_TYPE        {"BLANK" if p.mask_neighbours else "NONE"}
WEIGHT_TYPE      MAP_RMS
WEIGHT_IMAGE     {work}/rms.fits
WEIGHT_THRESH    1e29
WEIGHT_GAIN      N
GAIN             0
PHOT_APERTURES   {",".join(f"{2 * r:g}" for r in p.aper_radii)}
PHOT_AUTOPARAMS  {p.kron_factor},{p.kron_min_radius}
PHOT_AUTOAPERS   0.0,{p.auto_min_diameter}
PHOT_FLUXFRAC    0.5
SATUR_LEVEL      1e20
MAG_ZEROPOINT    0.0
PIXEL_SCALE      0
SEEING_FWHM      0.18
BACK_TYPE        AUTO
BACK_SIZE        {p.bw},{p.bh}
BACK_FILTERSIZE  {p.fw},{p.fh}
BACK_FILTTHRESH  {p.fthresh}
BACKPHOTO_TYPE   GLOBAL
INTERP_TYPE      NONE
MEMORY_PIXSTACK  3000000
MEMORY_OBJSTACK  3000
MEMORY_BUFSIZE   1024
CHECKIMAGE_TYPE  NONE
VERBOSE_TYPE     QUIET
NTHREADS         1
"""


@pytest.fixture(scope="module")
def both(exposure, tmp_path_factory: pytest.TempPathFactory) -> tuple[Extraction, Table]:
    exe = _sextractor()
    params = SepParams(filter_type="conv", thresh=1.5, minarea=5)
    work = tmp_path_factory.mktemp("sextractor")
    img = exposure.read()
    sci, err, dq = img.sci.copy(), img.err.copy(), img.dq.copy()
    mask = ((dq & params.dq_mask) != 0) | ~np.isfinite(sci) | ~(err > 0)
    fits.PrimaryHDU(sci, header=img.sci_header).writeto(work / "sci.fits")
    fits.PrimaryHDU(np.where(mask, 1e30, err).astype(np.float32)).writeto(work / "rms.fits")
    kernel = gaussian_kernel(params.filter_fwhm, params.filter_size)
    (work / "kernel.conv").write_text(
        "CONV NORM\n" + "".join(" ".join(f"{v:.8f}" for v in row) + "\n" for row in kernel))
    (work / "default.param").write_text(
        "\n".join(SEXTRACTOR_PARAMS.format(n=len(params.aper_radii)).split()) + "\n")
    (work / "run.sex").write_text(_config(params, work))
    proc = subprocess.run([exe, str(work / "sci.fits"), "-c", str(work / "run.sex")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sx = Table.read(work / "cat.fits", hdu=1)
    return extract(img, params), sx


def _bright_pairs(ours: Extraction, sx: Table) -> tuple[np.ndarray, np.ndarray]:
    c = ours.columns
    d = np.hypot(c["x_bary"][:, None] - sx["X_IMAGE"][None, :],
                 c["y_bary"][:, None] - sx["Y_IMAGE"][None, :])
    j = d.argmin(1)
    ok = d.min(1) < 1.0
    snr = np.asarray(sx["FLUX_AUTO"])[j] / np.asarray(sx["FLUXERR_AUTO"])[j]
    ok &= (snr > 50) & (c["flags"] == 0) & (np.asarray(sx["FLAGS"])[j] == 0)
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
