"""SEP background, detection and photometry for one HST exposure; ``SepParams``.

The measurement follows SExtractor's conventions so catalogs compare with the literature:

* bad pixels: DQ bits in ``dq_mask`` (default: the WFC3 bits that mean "this value is
  wrong"), non-finite SCI/ERR and ERR <= 0 are masked everywhere below;
* background: ``sep.Background`` on the masked image with ``bw``x``bh`` meshes filtered
  ``fw``x``fh`` (SExtractor's BACK_SIZE / BACK_FILTERSIZE), subtracted in place;
* detection on the background-subtracted image with a Gaussian matched-filter kernel
  (``filter_fwhm`` over ``filter_size``^2 pixels), thresholding at ``thresh`` times the
  per-pixel noise, which is ERR for an FLT (it includes the sources' Poisson noise), the
  WHT map scaled to the background rms for a DRZ, or the background rms map otherwise;
  with ``filter_type = "matched"`` the threshold is in units of the *filtered* noise (SEP's
  matched filter), with ``"conv"`` it is SExtractor's plain convolution;
* AUTO photometry: Kron radius measured within 6 isophotal radii (SExtractor's fixed
  KRON_NSIG), aperture scale ``max(kron_factor * kron_radius, kron_min_radius)``
  (PHOT_AUTOPARAMS 2.5, 3.5), summed over whole pixels whose centres fall inside (as
  SExtractor does for AUTO), a circular aperture of diameter ``auto_min_diameter`` when the
  ellipse is smaller (PHOT_AUTOAPERS); both centred on the isophotal barycentre;
* circular apertures of ``aper_radii`` with 5x5 sub-pixel sampling (SExtractor's
  APER_OVERSAMP); half-light radius normalised by the AUTO flux;
* positions: windowed (XWIN/YWIN-like, sigma = 2 r_half / 2.35) when ``windowed``, else the
  isophotal barycentre; reported 1-based as FITS and SExtractor do; ra/dec through the SCI
  header's WCS including SIP;
* with ``mask_neighbours`` the pixels of other detections are left out of every aperture
  (SExtractor's MASK_TYPE BLANK);
* AB magnitudes from PHOTFLAM/PHOTPLAM, else PHOTFNU; errors 2.5/ln(10) sigma_F/F.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import sep
from astropy.wcs import WCS

from lambda_sep.fitsread import Image, ImageError
from lambda_sep.params import SepParams, finite_number

__all__ = [
    "FLAG_CIRCULAR",
    "FLAG_KRON_MIN",
    "Extraction",
    "extract",
    "gaussian_kernel",
    "zeropoint",
]

# mastmirror's own bits in ``flags_auto``, above SEP's APER_* bits (16..128).
FLAG_KRON_MIN = 256  # no usable Kron radius: the minimum aperture scale was used
FLAG_CIRCULAR = 512  # the circular PHOT_AUTOAPERS fallback aperture was used

KRON_NSIG = 6.0  # SExtractor's fixed search ellipse for the Kron radius, in isophotal radii


def gaussian_kernel(fwhm: float, size: int) -> np.ndarray | None:
    """A ``size`` x ``size`` Gaussian of ``fwhm`` pixels sampled at pixel centres (peak 1),
    like SExtractor's gauss_<fwhm>_<size>x<size>.conv; None when ``fwhm`` is 0."""
    if fwhm <= 0:
        return None
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma * sigma))
    return g.astype(np.float32)


def zeropoint(image: Image) -> tuple[float | None, str]:
    """AB magnitude of 1 (BUNIT)/s: from PHOTFLAM/PHOTPLAM, else PHOTFNU; (None, "") if
    the header has neither."""
    flam, plam = image.keyword("PHOTFLAM"), image.keyword("PHOTPLAM")
    if finite_number(flam) and finite_number(plam) and flam > 0 and plam > 0:
        zp = -2.5 * math.log10(flam) - 21.10 - 5.0 * math.log10(plam) + 18.692
        return zp, "PHOTFLAM,PHOTPLAM"
    fnu = image.keyword("PHOTFNU")
    if finite_number(fnu) and fnu > 0:
        return -2.5 * math.log10(fnu) + 8.90, "PHOTFNU"
    return None, ""


@dataclass
class Extraction:
    """Measured sources and the numbers the catalog header records."""

    columns: dict[str, np.ndarray]  # catalog columns in order, one row per source
    units: dict[str, str]  # astropy unit string per column ('' = dimensionless)
    descriptions: dict[str, str]
    background: float  # global background level (BUNIT)
    background_rms: float
    zeropoint: float | None
    zeropoint_source: str
    flux_unit: str
    masked_pixels: int
    noise_source: str  # "ERR", "WHT", "background rms"
    wcs_ok: bool

    @property
    def count(self) -> int:
        """Number of sources."""
        return len(self.columns["number"])


_BUNITS = {"ELECTRONS/S": "electron / s", "ELECTRONS": "electron", "COUNTS/S": "ct / s",
           "COUNTS": "ct", "ELECTRONS/SEC": "electron / s"}


def _check_usable(sci: np.ndarray, mask: np.ndarray) -> None:
    # fmin/fmax skip NaN without copying the image (this runs on every invocation).
    flat = sci.ravel()
    lo, hi = float(np.fmin.reduce(flat)), float(np.fmax.reduce(flat))
    if not (math.isfinite(lo) or math.isfinite(hi)):
        raise ImageError("SCI has no finite pixels (all NaN or infinite)")
    if lo == hi:
        raise ImageError(f"SCI is constant: every finite pixel is {lo:g} (no data)")
    usable = mask.size - int(np.count_nonzero(mask))
    if usable < max(1000, mask.size // 100):
        raise ImageError(f"only {usable} of {mask.size} pixels are usable after masking "
                         "(DQ, non-finite SCI/ERR, ERR <= 0)")


def _noise(image: Image, mask: np.ndarray, bkg: Any) -> tuple[np.ndarray, str, float | None]:
    """Per-pixel noise for detection and photometry errors, its source, and the Poisson gain
    (None when the noise map already includes the sources' Poisson noise, as ERR does)."""
    if image.err is not None:
        return image.err, "ERR", None
    if image.wht is not None:
        wht = image.wht
        good = ~mask
        med = float(np.median(wht[good])) if good.any() else 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            err = (bkg.globalrms * np.sqrt(med / wht)).astype(np.float32)
        err[mask] = np.inf
        # DRZ WHT (final_wht_type EXP) is exposure time: Poisson counts = flux * EXPTIME.
        exptime = image.keyword("EXPTIME")
        gain = float(exptime) if finite_number(exptime) and exptime > 0 else None
        return err, "WHT", gain
    return bkg.rms(), "background rms", None


def extract(image: Image, params: SepParams) -> Extraction:
    """Background, detection and photometry of ``image``. Raises ``ImageError`` when the
    image has no usable data (all NaN, constant, almost everything masked)."""
    sci = image.sci
    mask = ~np.isfinite(sci)
    if image.dq is not None and params.dq_mask:
        mask |= (image.dq & params.dq_mask) != 0
    noise_map = image.err if image.err is not None else image.wht
    if noise_map is not None:
        with np.errstate(invalid="ignore"):
            # NaN compares false: one test masks NaN, zero and negative noise/weight.
            mask |= ~((noise_map > 0) & (noise_map < np.inf))
    _check_usable(sci, mask)

    # SEP treats masked pixels as zero with infinite noise; make that literal so NaNs
    # never reach its C code. The image array is ours (a decoded copy): work in place.
    np.copyto(sci, np.float32(0.0), where=mask)
    bkg = sep.Background(sci, mask=mask, bw=params.bw, bh=params.bh, fw=params.fw,
                         fh=params.fh, fthresh=params.fthresh)
    back_map = bkg.back()
    # Masked pixels end up at -background; every SEP call below is given the mask.
    np.subtract(sci, back_map, out=sci)
    err, noise_source, gain = _noise(image, mask, bkg)
    if noise_source == "ERR":
        err = err.copy()
        np.copyto(err, np.float32(1.0), where=mask)  # finite, so no NaN/0 reaches SEP

    # Dense fields need a bigger pixel stack and sub-object limit than SEP's defaults.
    sep.set_extract_pixstack(params.pixstack)
    sep.set_sub_object_limit(params.sub_object_limit)
    try:
        objs, segmap = sep.extract(
            sci, params.thresh, err=err, mask=mask, minarea=params.minarea,
            filter_kernel=gaussian_kernel(params.filter_fwhm, params.filter_size),
            filter_type=params.filter_type, deblend_nthresh=params.deblend_nthresh,
            deblend_cont=params.deblend_cont, clean=params.clean,
            clean_param=params.clean_param, segmentation_map=True,
        )
    except Exception as exc:  # SEP raises bare Exception for its internal limits
        raise ImageError(f"SEP extraction failed: {exc}") from exc

    n = len(objs)
    x, y = objs["x"], objs["y"]
    a, b, theta = objs["a"], objs["b"], objs["theta"]
    seg_kw: dict[str, Any] = {}
    if params.mask_neighbours:
        seg_kw = {"seg_id": np.arange(1, n + 1, dtype=np.int32), "segmap": segmap}

    # --- AUTO (Kron) photometry, SExtractor's recipe -----------------------------------
    valid_shape = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
    a_s = np.where(valid_shape, a, 1.0)
    b_s = np.where(valid_shape, b, 1.0)
    th_s = np.where(valid_shape, theta, 0.0)
    kron, kflag = sep.kron_radius(sci, x, y, a_s, b_s, th_s, KRON_NSIG, mask=mask, **seg_kw)
    kron_ok = np.isfinite(kron) & (kron > 0) & valid_shape
    scale = np.where(kron_ok, np.maximum(params.kron_factor * np.where(kron_ok, kron, 0.0),
                                         params.kron_min_radius), params.kron_min_radius)
    circ_r = params.auto_min_diameter / 2.0
    use_circle = (scale * np.sqrt(a_s * b_s) <= circ_r) | ~valid_shape
    circ_radius = np.full(n, max(circ_r, params.kron_min_radius))
    flux_auto = np.zeros(n)
    fluxerr_auto = np.zeros(n)
    flags_auto = np.asarray(kflag, dtype=np.int32).copy()
    ell = ~use_circle
    if ell.any():
        sk = {k: v[ell] for k, v in seg_kw.items() if k == "seg_id"}
        if sk:
            sk["segmap"] = segmap
        f, fe, fl = sep.sum_ellipse(sci, x[ell], y[ell], a_s[ell], b_s[ell], th_s[ell],
                                    scale[ell], err=err, mask=mask, gain=gain, subpix=1, **sk)
        flux_auto[ell], fluxerr_auto[ell] = f, fe
        flags_auto[ell] |= fl
    if use_circle.any():
        sk = {k: v[use_circle] for k, v in seg_kw.items() if k == "seg_id"}
        if sk:
            sk["segmap"] = segmap
        f, fe, fl = sep.sum_circle(sci, x[use_circle], y[use_circle], circ_radius[use_circle],
                                   err=err, mask=mask, gain=gain, subpix=1, **sk)
        flux_auto[use_circle], fluxerr_auto[use_circle] = f, fe
        flags_auto[use_circle] |= fl
    flags_auto |= np.where(kron_ok, 0, FLAG_KRON_MIN)
    flags_auto |= np.where(use_circle, FLAG_CIRCULAR, 0)

    # --- circular apertures ----------------------------------------------------------
    naper = len(params.aper_radii)
    flux_aper = np.zeros((n, naper))
    fluxerr_aper = np.zeros((n, naper))
    flags_aper = np.zeros((n, naper), np.int32)
    for j, r in enumerate(params.aper_radii):
        f, fe, fl = sep.sum_circle(sci, x, y, r, err=err, mask=mask, gain=gain, subpix=5,
                                   **seg_kw)
        flux_aper[:, j], fluxerr_aper[:, j], flags_aper[:, j] = f, fe, fl

    # --- half-light radius and windowed positions --------------------------------------
    if n:
        normflux = np.where(flux_auto > 0, flux_auto, np.nan)
        # Half the AUTO flux lies inside the AUTO ellipse, so a circle of its semi-major axis
        # bounds the search (smaller than SEP's customary 6a: the cost grows as rmax^2).
        rmax = np.maximum(np.where(use_circle, circ_radius, scale * a_s), 1.0)
        rhalf, _rflag = sep.flux_radius(sci, x, y, rmax, 0.5, normflux=normflux, mask=mask,
                                       subpix=5, **seg_kw)
        rhalf = np.where(flux_auto > 0, rhalf, np.nan)
        sig = 2.0 / 2.35 * np.where(np.isfinite(rhalf) & (rhalf > 0), rhalf, 1.0)
        # Exact pixel overlap (subpix=0) is faster than SExtractor's 11x11 sampling and
        # closer to the exact answer.
        xwin, ywin, wflag = sep.winpos(sci, x, y, sig, mask=mask, subpix=0)
        flags_win = np.asarray(wflag, np.int32)
    else:
        rhalf = np.zeros(0)
        xwin, ywin, flags_win = np.zeros(0), np.zeros(0), np.zeros(0, np.int32)
    if params.windowed:
        good_win = (flags_win == 0) & np.isfinite(xwin) & np.isfinite(ywin)
        # A windowed centroid that wandered off its object is worse than the barycentre.
        good_win &= np.hypot(xwin - x, ywin - y) < np.maximum(2.0, a_s)
        xpos = np.where(good_win, xwin, x)
        ypos = np.where(good_win, ywin, y)
        flags_win = np.where(good_win, flags_win, flags_win | 1)
    else:
        xpos, ypos = x, y

    # --- DQ bits within each object's isophote (saturation, CR, ...) --------------------
    flags_dq = np.zeros(n, np.int32)
    if n and image.dq is not None:
        dq_flat = image.dq.ravel()
        members = segmap.ravel()
        sel = np.flatnonzero((dq_flat != 0) & (members != 0))  # few pixels: flagged ones
        np.bitwise_or.at(flags_dq, members[sel] - 1, dq_flat[sel].astype(np.int32))

    # --- sky coordinates, magnitudes ---------------------------------------------------
    ra = np.full(n, np.nan)
    dec = np.full(n, np.nan)
    wcs_ok = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # HST headers trip astropy's FITS WCS fixers
            wcs = WCS(image.sci_header)
            if wcs.has_celestial and n:
                ra, dec = wcs.all_pix2world(xpos + 1.0, ypos + 1.0, 1)
            wcs_ok = bool(wcs.has_celestial)
    except Exception:
        wcs_ok = False

    zp, zp_source = zeropoint(image)
    bunit = str(image.keyword("BUNIT", "") or "").strip().upper()
    flux_unit = _BUNITS.get(bunit, "")
    per_second = 1.0
    if bunit in ("ELECTRONS", "COUNTS"):  # magnitudes need a rate
        exptime = image.keyword("EXPTIME")
        per_second = 1.0 / float(exptime) if finite_number(exptime) and exptime > 0 else math.nan

    def mags(f: np.ndarray, fe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = f > 0
            m = np.where(pos, (zp if zp is not None else np.nan)
                         - 2.5 * np.log10(np.where(pos, f * per_second, 1.0)), np.nan)
            me = np.where(pos, 2.5 / math.log(10.0) * fe / np.where(pos, f, 1.0), np.nan)
        return m, me

    mag_auto, magerr_auto = mags(flux_auto, fluxerr_auto)
    mag_aper, magerr_aper = mags(flux_aper, fluxerr_aper)
    iy = np.clip(objs["ycpeak"], 0, sci.shape[0] - 1)
    ix = np.clip(objs["xcpeak"], 0, sci.shape[1] - 1)

    f32 = np.float32
    columns = {
        "number": np.arange(1, n + 1, dtype=np.int32),
        "x": xpos + 1.0,
        "y": ypos + 1.0,
        "ra": np.asarray(ra, np.float64),
        "dec": np.asarray(dec, np.float64),
        "x_bary": x + 1.0,
        "y_bary": y + 1.0,
        "a": a.astype(f32),
        "b": b.astype(f32),
        "theta": np.degrees(theta).astype(f32),
        "npix": objs["npix"].astype(np.int32),
        # SExtractor's KRON_RADIUS: the scale actually applied to a, b (0 for a circle).
        "kron_radius": np.where(use_circle, 0.0, scale).astype(f32),
        "flux_auto": flux_auto.astype(f32),
        "fluxerr_auto": fluxerr_auto.astype(f32),
        "mag_auto": mag_auto.astype(f32),
        "magerr_auto": magerr_auto.astype(f32),
        "flux_aper": flux_aper.astype(f32),
        "fluxerr_aper": fluxerr_aper.astype(f32),
        "mag_aper": mag_aper.astype(f32),
        "magerr_aper": magerr_aper.astype(f32),
        "flux_iso": objs["flux"].astype(f32),
        "flux_radius": np.asarray(rhalf, f32),
        "peak": objs["peak"].astype(f32),
        "background": back_map[iy, ix].astype(f32),
        "flags": objs["flag"].astype(np.int16),
        "flags_auto": flags_auto.astype(np.int16),
        "flags_aper": flags_aper.astype(np.int16),
        "flags_win": flags_win.astype(np.int16),
        "flags_dq": flags_dq,
    }
    pix, deg = "pix", "deg"
    units = {
        "number": "", "x": pix, "y": pix, "ra": deg, "dec": deg, "x_bary": pix, "y_bary": pix,
        "a": pix, "b": pix, "theta": deg, "npix": "pix2", "kron_radius": "",
        "flux_auto": flux_unit, "fluxerr_auto": flux_unit, "mag_auto": "mag(AB)",
        "magerr_auto": "mag", "flux_aper": flux_unit, "fluxerr_aper": flux_unit,
        "mag_aper": "mag(AB)", "magerr_aper": "mag", "flux_iso": flux_unit,
        "flux_radius": pix, "peak": flux_unit, "background": flux_unit, "flags": "",
        "flags_auto": "", "flags_aper": "", "flags_win": "", "flags_dq": "",
    }
    descriptions = {
        "number": "running source number",
        "x": "x, 1-based (windowed)" if params.windowed else "x, 1-based (barycentre)",
        "y": "y, 1-based (windowed)" if params.windowed else "y, 1-based (barycentre)",
        "ra": "right ascension (ICRS) from SCI WCS with SIP",
        "dec": "declination (ICRS) from SCI WCS with SIP",
        "x_bary": "isophotal barycentre x, 1-based",
        "y_bary": "isophotal barycentre y, 1-based",
        "a": "isophotal semi-major axis rms",
        "b": "isophotal semi-minor axis rms",
        "theta": "major axis angle, CCW from +x",
        "npix": "isophotal area",
        "kron_radius": "AUTO ellipse scale (a, b units), 0 = circle",
        "flux_auto": "flux in Kron (AUTO) aperture",
        "fluxerr_auto": "error of flux_auto",
        "mag_auto": "AB magnitude, AUTO",
        "magerr_auto": "error of mag_auto",
        "flux_aper": "flux in circular apertures",
        "fluxerr_aper": "error of flux_aper",
        "mag_aper": "AB magnitude, apertures",
        "magerr_aper": "error of mag_aper",
        "flux_iso": "isophotal flux",
        "flux_radius": "half-light radius",
        "peak": "peak pixel above background",
        "background": "background at the peak",
        "flags": "SEP object flags (1,2,4,8)",
        "flags_auto": "AUTO flags (SEP 16..128; 256 kron min; 512 circ)",
        "flags_aper": "SEP aperture flags per aperture",
        "flags_win": "winpos flags; 1 = barycentre used",
        "flags_dq": "OR of DQ bits over the isophote",
    }
    return Extraction(
        columns=columns, units=units, descriptions=descriptions,
        background=float(bkg.globalback), background_rms=float(bkg.globalrms),
        zeropoint=zp, zeropoint_source=zp_source, flux_unit=flux_unit,
        masked_pixels=int(np.count_nonzero(mask)), noise_source=noise_source, wcs_ok=wcs_ok,
    )
