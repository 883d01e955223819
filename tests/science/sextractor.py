"""Run SExtractor (Debian's ``source-extractor``) on the image lambda_sep measures.

Both see the same pixels and the same settings: the same Gaussian kernel file (SExtractor's
only filter is a plain convolution, so SEP runs with ``filter_type = "conv"`` when compared),
threshold, minimum area, background mesh and filter, deblending, PHOT_AUTOPARAMS, apertures,
no cleaning, and the per-pixel noise lambda_sep uses as a MAP_RMS map.

Masked pixels (lambda_sep's mask: DQ bits, non-finite values, unusable noise) are shown to
SExtractor as pixels at the local background with the median noise, and flagged in a
FLAG_IMAGE (IMAFLAGS_ISO > 0 for a source that touches one). An rms of 1e30 there instead
(above WEIGHT_THRESH) makes SExtractor's detection lose sources next to masked pixels (it did
on the GJ 1214 frames). To measure SExtractor's own treatment of masked pixels in
photometry (MASK_TYPE CORRECT or BLANK), ``measure_masked=True`` runs in dual-image mode:
detection as above, measurement on the same pixels with masked pixels above WEIGHT_THRESH.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from lambda_sep.extract import gaussian_kernel, prepare
from lambda_sep.fitsread import Image
from lambda_sep.params import SepParams

PARAMETERS = (
    "NUMBER X_IMAGE Y_IMAGE XWIN_IMAGE YWIN_IMAGE A_IMAGE B_IMAGE THETA_IMAGE KRON_RADIUS "
    "FLUX_AUTO FLUXERR_AUTO FLUX_APER({n}) FLUXERR_APER({n}) FLUX_RADIUS FLAGS FLAGS_WIN "
    "ISOAREA_IMAGE IMAFLAGS_ISO NIMAFLAGS_ISO"
)
BAD_RMS = 1e30  # above WEIGHT_THRESH: a bad pixel to SExtractor


def executable() -> str:
    """The SExtractor program; the comparison must run, so its absence fails the test."""
    exe = shutil.which("source-extractor") or shutil.which("sex")
    if exe is None:
        pytest.fail("SExtractor is not installed: install Debian's `source-extractor` package "
                    "(apt-get install source-extractor); CI installs it. This comparison "
                    "must run, it is never skipped.")
    return exe


def _config(p: SepParams, work: Path, *, mask_type: str, weight: str) -> str:
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
MASK_TYPE        {mask_type}
WEIGHT_TYPE      {weight}
WEIGHT_IMAGE     {work}/rms.fits{f",{work}/rms_meas.fits" if "," in weight else ""}
WEIGHT_THRESH    1e29
WEIGHT_GAIN      N
FLAG_IMAGE       {work}/flag.fits
FLAG_TYPE        OR
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


@dataclass
class Inputs:
    """What SExtractor is shown, and lambda_sep's mask."""

    sci: np.ndarray  # SCI with masked pixels at the background
    rms: np.ndarray  # lambda_sep's noise, masked pixels at the median
    mask: np.ndarray


def inputs(image: Image, params: SepParams) -> Inputs:
    """SExtractor's view of ``image`` (consumed: lambda_sep's stages work in place)."""
    raw = image.sci.copy()
    frame = prepare(image, params)
    median = np.float32(np.median(frame.noise[~frame.mask]))
    return Inputs(np.where(frame.mask, frame.back, raw).astype(np.float32),
                  np.where(frame.mask, median, frame.noise).astype(np.float32), frame.mask)


def run(image: Image, params: SepParams, work: Path, *, mask_type: str = "BLANK",
        measure_masked: bool = False) -> Table:
    """SExtractor's catalog of ``image`` (consumed) with ``params`` in directory ``work``."""
    exe = executable()
    work.mkdir(parents=True, exist_ok=True)
    view = inputs(image, params)
    fits.PrimaryHDU(view.sci, header=image.sci_header).writeto(work / "sci.fits",
                                                              overwrite=True)
    fits.PrimaryHDU(view.rms).writeto(work / "rms.fits", overwrite=True)
    fits.PrimaryHDU(view.mask.astype(np.int16)).writeto(work / "flag.fits", overwrite=True)
    weight = "MAP_RMS"
    target = str(work / "sci.fits")
    if measure_masked:
        fits.PrimaryHDU(np.where(view.mask, np.float32(BAD_RMS), view.rms)).writeto(
            work / "rms_meas.fits", overwrite=True)
        weight, target = "MAP_RMS,MAP_RMS", f"{target},{target}"
    kernel = gaussian_kernel(params.filter_fwhm, params.filter_size)
    assert kernel is not None
    (work / "kernel.conv").write_text(
        "CONV NORM\n" + "".join(" ".join(f"{v:.8f}" for v in row) + "\n" for row in kernel))
    (work / "default.param").write_text(
        "\n".join(PARAMETERS.format(n=len(params.aper_radii)).split()) + "\n")
    (work / "run.sex").write_text(_config(params, work, mask_type=mask_type, weight=weight))
    proc = subprocess.run([exe, target, "-c", str(work / "run.sex")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return Table.read(work / "cat.fits", hdu=1)


def nearest(x: np.ndarray, y: np.ndarray, sx: Table) -> tuple[np.ndarray, np.ndarray]:
    """For each (x, y): the index of the nearest SExtractor barycentre and its distance."""
    if not len(sx) or not len(x):
        return np.zeros(len(x), int), np.full(len(x), np.inf)
    d = np.hypot(x[:, None] - np.asarray(sx["X_IMAGE"])[None, :],
                 y[:, None] - np.asarray(sx["Y_IMAGE"])[None, :])
    return d.argmin(1), d.min(1)
