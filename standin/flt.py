"""Synthetic WFC3/IR FLT (and DRZ) files with injected stars and galaxies, and their truth.

``make_flt(obs_id, seed=...)`` returns the bytes of a FITS file shaped like a calibrated
WFC3/IR exposure from MAST and a structured array describing every injected source:

* primary header with the keywords real FLT files carry (TELESCOP, INSTRUME, DETECTOR,
  FILTER, EXPTIME, ROOTNAME, DATE-OBS, and the photometry keywords PHOTMODE, PHOTFLAM,
  PHOTFNU, PHOTZPT, PHOTPLAM, PHOTBW, which calwf3 writes to the primary header for IR);
* ``SCI`` (float32, electrons/s) with a TAN-SIP WCS of WFC3/IR's ~0.1283"/px skewed pixels,
  then ``ERR`` (float32), ``DQ`` (int16, WFC3 bit values), ``SAMP`` (int16) and ``TIME``
  (float32), each 1014x1014, ``EXTNAME``/``EXTVER`` as calwf3 writes them.

The image is sky with a gentle gradient, plus sources, plus Gaussian-approximated Poisson and
read noise drawn from the same variance that ``ERR`` reports. Stars are Moffat (beta=4)
profiles with FWHM 1.3-1.6 px integrated over 5x5 sub-pixels; galaxies are elliptical
Sersic profiles (n 0.8-2.5, r_eff 1-5 px) convolved with the PSF. Every source's flux is set
from a target S/N (log-uniform in ``snr_range``) measured in a fixed aperture: a circle of
radius 2 FWHM for stars, an ellipse of semi-major axis max(2 r_eff, 2.5 px) for galaxies.
Sources keep a minimum separation so the truth is unambiguous; blends are not the point.

Detector defects use WFC3's DQ bits: dead pixels and a "death star" (4), hot pixels with
high values (16), unstable pixels with junk (32), cosmic rays rejected by the up-the-ramp
fit (8192, values good), saturated star cores fitted from early reads (256, values good)
and flat-field "blobs" (512, values good).

Everything is deterministic for a given seed; one 1014x1014 file takes well under 0.3 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = [
    "BROKEN_KINDS",
    "DISPERSERS",
    "DQ",
    "FILTERS",
    "TRUTH_DTYPE",
    "FilterInfo",
    "SyntheticFlt",
    "archive_flt",
    "make_broken_flt",
    "make_drz",
    "make_flt",
    "make_noise_flt",
    "reprocess_flt",
    "synthesize_flt",
]

SHAPE = (1014, 1014)
BLOCK = 2880


class DQ:
    """WFC3 data-quality bit values (WFC3 Data Handbook, table 2.5), the ones used here."""

    REED_SOLOMON = 1
    FILL = 2
    BAD_DETECTOR = 4
    ZERO_READ_UNSTABLE = 8
    HOT = 16
    UNSTABLE = 32
    WARM = 64
    BAD_REFERENCE = 128
    SATURATED = 256
    BAD_FLAT = 512
    SIGNAL_IN_ZERO_READ = 2048
    CR_DRIZZLE = 4096
    CR_RAMP = 8192
    GHOST = 16384


@dataclass(frozen=True)
class FilterInfo:
    """Photometry keywords and a typical sky level of one WFC3/IR filter."""

    photflam: float  # erg cm-2 s-1 A-1 per e-/s
    photplam: float  # pivot wavelength, Angstrom
    photbw: float  # rms bandwidth, Angstrom
    sky: float  # e-/s/pixel at moderate zodiacal light

    @property
    def photfnu(self) -> float:
        """Jy s / e-: F_nu = PHOTFLAM * PHOTPLAM^2 / c."""
        return 3.33564095e4 * self.photflam * self.photplam**2

    @property
    def zeropoint_ab(self) -> float:
        """AB magnitude of 1 e-/s."""
        return -2.5 * math.log10(self.photflam) - 21.10 - 5 * math.log10(self.photplam) + 18.692


FILTERS: dict[str, FilterInfo] = {
    "F105W": FilterInfo(3.0386e-20, 10551.05, 845.7, 0.95),
    "F110W": FilterInfo(1.5274e-20, 11534.46, 1428.6, 1.45),
    "F125W": FilterInfo(2.2483e-20, 12486.07, 866.2, 0.90),
    "F140W": FilterInfo(1.4737e-20, 13922.91, 1132.4, 1.10),
    "F160W": FilterInfo(1.9275e-20, 15369.18, 826.3, 0.80),
    # The grisms: dispersed exposures, FLT files like any other (OBSTYPE = 'SPECTROSCOPIC',
    # FILTER = 'G102'/'G141', the values WFC3 headers carry). Their photometry keywords
    # exist in real grism FLTs; these values are synthetic, of the right order only.
    "G102": FilterInfo(2.7e-20, 9990.0, 800.0, 0.60),
    "G141": FilterInfo(1.5e-20, 13890.0, 1250.0, 1.00),
}
#: Length of a source's first-order trace along x, px (G141's spans about 130 px: STScI's
#: WFC3 grism FAQ; G102's 800-1150 nm at about 24.5 A/px, about 140 px).
DISPERSERS: dict[str, int] = {"G102": 140, "G141": 130}

TRUTH_DTYPE = np.dtype(
    [
        ("id", "i4"),
        ("kind", "U6"),  # "star" or "galaxy"
        ("x", "f8"),  # 1-based FITS pixel coordinates, as SExtractor reports them
        ("y", "f8"),
        ("ra", "f8"),  # degrees, from the SCI WCS including SIP
        ("dec", "f8"),
        ("flux", "f8"),  # total injected flux, e-/s
        ("mag", "f8"),  # AB
        ("snr", "f8"),  # S/N in the reference aperture (see module docstring)
        ("fwhm", "f8"),  # PSF FWHM, px
        ("r_eff", "f8"),  # half-light radius before PSF convolution, px (0 for stars)
        ("q", "f8"),  # axis ratio b/a (1 for stars)
        ("pa", "f8"),  # position angle of the major axis from +x, degrees
        ("sersic_n", "f8"),  # 0 for stars
    ]
)

BROKEN_KINDS = (
    "truncated",
    "corrupt-header",
    "no-sci",
    "all-nan",
    "all-zero",
    "wrong-shape",
    "cube",
    "not-fits",
    "empty",
)

_MOFFAT_BETA = 4.0
_READ_NOISE = 14.0  # e-, effective for a 16-read up-the-ramp fit
_DARK = 0.05  # e-/s/px
_FULL_WELL = 78000.0  # e-: calwf3 flags 256 and fits the unsaturated reads
_NSAMP = 16


# --------------------------------------------------------------------------------------
# Profiles


def _moffat_alpha(fwhm: float, beta: float = _MOFFAT_BETA) -> float:
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _moffat_stamp(dx: float, dy: float, fwhm: float, half: int, ss: int = 5) -> np.ndarray:
    """Unit-flux Moffat integrated over ``ss`` x ``ss`` sub-pixels on a (2h+1)^2 stamp.

    ``dx, dy`` is the source centre relative to the stamp's central pixel centre.
    """
    alpha = _moffat_alpha(fwhm)
    n = 2 * half + 1
    sub = (np.arange(n * ss) + 0.5) / ss - 0.5 - half  # sub-pixel centres, pixel units
    u = sub - dx
    v = sub - dy
    r2 = (v[:, None] ** 2 + u[None, :] ** 2) / alpha**2
    prof = (_MOFFAT_BETA - 1.0) / (math.pi * alpha**2) * (1.0 + r2) ** (-_MOFFAT_BETA)
    # Average the sub-pixels of each pixel: the integral over the pixel (area 1).
    return prof.reshape(n, ss, n, ss).mean(axis=(1, 3))


def _sersic_b(n: float) -> float:
    # Ciotti & Bertin (1999) asymptotic expansion, good to 1e-6 for n > 0.36.
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2) + 131 / (1148175 * n**3)


def _sersic_stamp(
    dx: float, dy: float, *, r_eff: float, n: float, q: float, pa: float, half: int, ss: int = 2
) -> np.ndarray:
    """Unnormalised elliptical Sersic profile sampled on ``ss`` x ``ss`` sub-pixels."""
    size = 2 * half + 1
    sub = (np.arange(size * ss) + 0.5) / ss - 0.5 - half
    u = sub[None, :] - dx
    v = sub[:, None] - dy
    c, s = math.cos(pa), math.sin(pa)
    xp = u * c + v * s
    yp = (-u * s + v * c) / q
    r = np.sqrt(xp * xp + yp * yp) / r_eff
    prof = np.exp(-_sersic_b(n) * (r ** (1.0 / n) - 1.0))
    return prof.reshape(size, ss, size, ss).mean(axis=(1, 3))


def _convolve_same(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution cropped to ``img``'s shape (FFT; both arrays are small)."""
    sy, sx = img.shape[0] + kernel.shape[0] - 1, img.shape[1] + kernel.shape[1] - 1
    out = np.fft.irfft2(np.fft.rfft2(img, (sy, sx)) * np.fft.rfft2(kernel, (sy, sx)), (sy, sx))
    oy, ox = kernel.shape[0] // 2, kernel.shape[1] // 2
    return out[oy : oy + img.shape[0], ox : ox + img.shape[1]]


# --------------------------------------------------------------------------------------
# WCS and headers


def _wcs_header(rng: np.random.Generator, shape: tuple[int, int]) -> fits.Header:
    """A WFC3/IR-like TAN-SIP WCS: 0.1355" x 0.1211" skewed pixels, 4th-order SIP."""
    ra = float(rng.uniform(0.0, 360.0))
    dec = float(np.degrees(np.arcsin(rng.uniform(-0.85, 0.85))))
    orient = float(rng.uniform(-180.0, 180.0))
    th = math.radians(orient)
    sx, sy = 0.1355 / 3600.0, 0.1211 / 3600.0
    skew = math.radians(0.6)  # the IR detector's x and y axes are not quite orthogonal
    cd = np.array(
        [
            [-sx * math.cos(th), sy * math.sin(th + skew)],
            [sx * math.sin(th), sy * math.cos(th + skew)],
        ]
    )
    h = fits.Header()
    h["WCSAXES"] = (2, "number of World Coordinate System axes")
    # WFC3/IR puts the reference pixel at the centre: 507 for the 1014-pixel full frame.
    h["CRPIX1"] = (float(shape[1] // 2), "x-coordinate of reference pixel")
    h["CRPIX2"] = (float(shape[0] // 2), "y-coordinate of reference pixel")
    h["CRVAL1"] = (ra, "first axis value at reference pixel")
    h["CRVAL2"] = (dec, "second axis value at reference pixel")
    h["CTYPE1"] = ("RA---TAN-SIP", "the coordinate type for the first axis")
    h["CTYPE2"] = ("DEC--TAN-SIP", "the coordinate type for the second axis")
    h["CD1_1"] = (float(cd[0, 0]), "partial of first axis coordinate w.r.t. x")
    h["CD1_2"] = (float(cd[0, 1]), "partial of first axis coordinate w.r.t. y")
    h["CD2_1"] = (float(cd[1, 0]), "partial of second axis coordinate w.r.t. x")
    h["CD2_2"] = (float(cd[1, 1]), "partial of second axis coordinate w.r.t. y")
    h["LTV1"] = (0.0, "offset in X to subsection start")
    h["LTV2"] = (0.0, "offset in Y to subsection start")
    h["LTM1_1"] = (1.0, "reciprocal of sampling rate in X")
    h["LTM2_2"] = (1.0, "reciprocal of sampling rate in Y")
    h["ORIENTAT"] = (orient, "position angle of image y axis (deg. e of n)")
    h["RA_APER"] = (ra, "RA of aperture reference position")
    h["DEC_APER"] = (dec, "Declination of aperture reference position")
    h["PA_APER"] = (orient - 0.2, "Position Angle of reference aperture center (de")
    h["VAFACTOR"] = (1.000034, "velocity aberration plate scale factor")
    h["IDCSCALE"] = (0.1283, "pixel scale of the distortion solution, arcsec")
    h["IDCTAB"] = ("iref$w3m18525i_idc.fits", "image distortion correction table")
    # Quadratic and cubic SIP terms of the size WFC3/IR's solution has (pixels at the edge).
    h["A_ORDER"] = (4, "SIP polynomial order, axis 1, detector to sky")
    coeffs_a = {"A_0_2": 2.3e-6, "A_1_1": -2.9e-5, "A_2_0": 2.6e-5, "A_0_3": 5.0e-11,
                "A_1_2": -5.8e-10, "A_2_1": -3.2e-11, "A_3_0": -4.7e-10, "A_0_4": 1.2e-14,
                "A_1_3": -2.1e-14, "A_2_2": 2.9e-14, "A_3_1": 1.1e-15, "A_4_0": 6.3e-15}
    coeffs_b = {"B_0_2": -3.6e-5, "B_1_1": 2.9e-5, "B_2_0": -2.4e-6, "B_0_3": 4.4e-10,
                "B_1_2": -8.0e-11, "B_2_1": 6.0e-10, "B_3_0": 2.1e-11, "B_0_4": -9.7e-15,
                "B_1_3": 3.9e-14, "B_2_2": -1.5e-14, "B_3_1": 2.2e-14, "B_4_0": 6.8e-16}
    for k, val in coeffs_a.items():
        h[k] = (val, "SIP distortion coefficient")
    h["B_ORDER"] = (4, "SIP polynomial order, axis 2, detector to sky")
    for k, val in coeffs_b.items():
        h[k] = (val, "SIP distortion coefficient")
    h["WCSNAME"] = ("IDC_w3m18525i", "coordinate system title")
    return h


def _primary_header(obs_id: str, flt: FilterInfo, filt: str, *, exptime: float,
                    date_obs: str, time_obs: str, expstart: float, ra: float, dec: float,
                    filetype: str = "SCI") -> fits.Header:
    h = fits.Header()
    h["SIMPLE"] = (True, "conforms to FITS standard")
    h["BITPIX"] = (16, "array data type")
    h["NAXIS"] = (0, "number of array dimensions")
    h["EXTEND"] = True
    h["NEXTEND"] = (5, "Number of standard extensions")
    h["DATE"] = (date_obs, "date this file was written (yyyy-mm-dd)")
    h["FILENAME"] = (f"{obs_id}_flt.fits", "name of file")
    h["FILETYPE"] = (filetype, "type of data found in data file")
    h["TELESCOP"] = ("HST", "telescope used to acquire data")
    h["INSTRUME"] = ("WFC3", "identifier for instrument used to acquire data")
    h["EQUINOX"] = (2000.0, "equinox of celestial coord. system")
    h["ROOTNAME"] = (obs_id, "rootname of the observation set")
    h["IMAGETYP"] = ("EXT", "type of exposure identifier")
    h["PRIMESI"] = ("WFC3", "instrument designated as prime")
    h["TARGNAME"] = ("ANY", "proposer's target name")
    h["RA_TARG"] = (ra, "right ascension of the target (deg) (J2000)")
    h["DEC_TARG"] = (dec, "declination of the target (deg) (J2000)")
    h["PROPOSID"] = (15000 + int(obs_id[1:4], 36) % 2000, "PEP proposal identifier")
    h["LINENUM"] = (f"{obs_id[4:6]}.{obs_id[6:8]}", "proposal logsheet line number")
    h["PR_INV_L"] = ("Synthetic", "last name of principal investigator")
    h["PR_INV_F"] = ("Stand-In", "first name of principal investigator")
    h["DATE-OBS"] = (date_obs, "UT date of start of observation (yyyy-mm-dd)")
    h["TIME-OBS"] = (time_obs, "UT time of start of observation (hh:mm:ss)")
    h["EXPSTART"] = (expstart, "exposure start time (Modified Julian Date)")
    h["EXPEND"] = (expstart + exptime / 86400.0, "exposure end time (Modified Julian Date)")
    h["EXPTIME"] = (exptime, "exposure duration (seconds)--calculated")
    h["TEXPTIME"] = (exptime, "total exposure time (seconds)")
    h["EXPFLAG"] = ("NORMAL", "Exposure interruption indicator")
    h["QUALCOM1"] = ""
    h["OBSTYPE"] = ("SPECTROSCOPIC" if filt in DISPERSERS else "IMAGING",
                    "observation type - imaging or spectroscopic")
    h["OBSMODE"] = ("MULTIACCUM", "operating mode")
    h["SCLAMP"] = ("NONE", "lamp status, NONE or name of lamp which is on")
    h["NRPTEXP"] = (1, "number of repeat exposures in set: default 1")
    h["SUBARRAY"] = (False, "data from a subarray (T) or full frame (F)")
    h["SUBTYPE"] = ("FULLIMAG", "Size/type of IR subarray")
    h["DETECTOR"] = ("IR", "detector in use: UVIS or IR")
    h["FILTER"] = (filt, "element selected from filter wheel")
    h["APERTURE"] = ("IR", "aperture name")
    h["PROPAPER"] = ("", "proposed aperture name")
    h["DIRIMAGE"] = ("NONE", "direct image for grism or prism exposure")
    h["NSAMP"] = (_NSAMP, "number of MULTIACCUM samples")
    h["SAMP_SEQ"] = ("SPARS100", "MultiAccum exposure time sequence name")
    h["SAMPZERO"] = (2.911756, "sample time of the zeroth read (sec)")
    h["CCDAMP"] = ("ABCD", "CCD Amplifier Readout Configuration")
    h["CCDGAIN"] = (2.5, "commanded gain of CCD")
    h["ATODGNA"] = (2.34, "calibrated gain for amplifier A")
    h["ATODGNB"] = (2.37, "calibrated gain for amplifier B")
    h["ATODGNC"] = (2.31, "calibrated gain for amplifier C")
    h["ATODGND"] = (2.38, "calibrated gain for amplifier D")
    h["READNSEA"] = (20.2, "calibrated read noise for amplifier A")
    h["READNSEB"] = (19.8, "calibrated read noise for amplifier B")
    h["READNSEC"] = (19.9, "calibrated read noise for amplifier C")
    h["READNSED"] = (20.1, "calibrated read noise for amplifier D")
    h["BUNIT"] = ("ELECTRONS/S", "brightness units")
    for sw in ("DQICORR", "ZSIGCORR", "ZOFFCORR", "DARKCORR", "BLEVCORR", "NLINCORR",
               "FLATCORR", "CRCORR", "UNITCORR", "PHOTCORR", "RPTCORR", "DRIZCORR"):
        h[sw] = ("COMPLETE" if sw not in ("RPTCORR", "DRIZCORR") else "OMIT",
                 "calibration switch")
    h["BPIXTAB"] = ("iref$35620330i_bpx.fits", "bad pixel table")
    h["CCDTAB"] = ("iref$t2c16200i_ccd.fits", "detector calibration parameters")
    h["OSCNTAB"] = ("iref$q911321mi_osc.fits", "detector overscan table")
    h["DARKFILE"] = ("iref$3562021pi_drk.fits", "dark image file name")
    h["NLINFILE"] = ("iref$u1k1727mi_lin.fits", "detector nonlinearities file")
    h["PFLTFILE"] = ("iref$uc721143i_pfl.fits", "pixel to pixel flat field file name")
    h["IMPHTTAB"] = ("iref$wbj1825ri_imp.fits", "Image Photometry Table")
    h["MDRIZTAB"] = ("iref$3562021si_mdz.fits", "MultiDrizzle parameter table")
    h["CAL_VER"] = ("3.7.2(Apr-15-2024)", "CALWF3 code version")
    # Photometry keywords: for IR exposures calwf3 writes these to the primary header.
    h["PHOTMODE"] = (f"WFC3 IR {filt}", "observation con")
    h["PHOTFLAM"] = (flt.photflam, "inverse sensitivity, ergs/cm2/A/e-")
    h["PHOTFNU"] = (flt.photfnu, "inverse sensitivity, Jy*sec/e-")
    h["PHOTZPT"] = (-21.1, "ST magnitude zero point")
    h["PHOTPLAM"] = (flt.photplam, "Pivot wavelength (Angstroms)")
    h["PHOTBW"] = (flt.photbw, "RMS bandwidth of filter plus detector")
    return h


def _ext_header(extname: str, bunit: str, wcs: fits.Header | None, extra: dict) -> fits.Header:
    h = fits.Header()
    h["EXTNAME"] = (extname, "extension name")
    h["EXTVER"] = (1, "extension version number")
    h["ROOTNAME"] = (extra.pop("ROOTNAME"), "rootname of the observation set")
    h["INHERIT"] = (True, "inherit the primary header")
    h["EXPNAME"] = (extra.pop("EXPNAME"), "exposure identifier")
    h["BUNIT"] = (bunit, "brightness units")
    for k, v in extra.items():
        h[k] = v
    if wcs is not None:
        h.extend(wcs)
    return h


def _image_hdu_bytes(header: fits.Header, data: np.ndarray | None, *,
                     shape: tuple[int, ...] | None = None) -> bytes:
    """Serialise one IMAGE extension: header cards in calwf3's order, big-endian data."""
    bitpix = {np.dtype("float32"): -32, np.dtype("int16"): 16, np.dtype("float64"): -64,
              np.dtype("int32"): 32}
    h = fits.Header()
    h["XTENSION"] = ("IMAGE", "extension type")
    if data is None:
        h["BITPIX"] = (16, "bits per data value")
        h["NAXIS"] = (0, "number of data axes")
    else:
        dims = shape or data.shape
        h["BITPIX"] = (bitpix[data.dtype], "bits per data value")
        h["NAXIS"] = (len(dims), "number of data axes")
        for i, n in enumerate(reversed(dims), start=1):
            h[f"NAXIS{i}"] = (n, f"length of data axis {i}")
    h["PCOUNT"] = (0, "required keyword; must = 0")
    h["GCOUNT"] = (1, "required keyword; must = 1")
    h.extend(header)
    raw = h.tostring().encode("ascii")
    if data is None:
        return raw
    body = data.astype(data.dtype.newbyteorder(">"), copy=False).tobytes()
    return raw + body + b"\0" * (-len(body) % BLOCK)


def _primary_bytes(header: fits.Header) -> bytes:
    return header.tostring().encode("ascii")


# --------------------------------------------------------------------------------------
# The exposure


def _place(rng: np.random.Generator, radii: np.ndarray, margins: np.ndarray,
           shape: tuple[int, int], min_sep: float) -> np.ndarray:
    """Positions (0-based x, y) with pairwise separation >= min_sep + 2 (r_i + r_j), each
    at least its margin (its stamp's half-size) from the edges so no flux falls outside."""
    ny, nx = shape
    out = np.empty((len(radii), 2))
    for i, (r, margin) in enumerate(zip(radii, margins, strict=True)):
        for _ in range(2000):
            p = rng.uniform([margin, margin], [nx - 1 - margin, ny - 1 - margin])
            if i == 0:
                break
            d = np.hypot(*(out[:i] - p).T)
            if np.all(d >= min_sep + 2.0 * (radii[:i] + r)):
                break
        out[i] = p
    return out


def _flux_for_snr(snr: float, frac: float, npix: float, var_bg: float, exptime: float) -> float:
    """Total flux (e-/s) whose aperture S/N is ``snr``.

    S/N = f F / sqrt(N v_bg + f F / t) with v_bg the per-pixel background variance in
    (e-/s)^2; solve the quadratic for f F.
    """
    s2 = snr * snr
    ff = 0.5 * (s2 / exptime + math.sqrt((s2 / exptime) ** 2 + 4.0 * s2 * npix * var_bg))
    return ff / frac


def _render(
    seed: int,
    *,
    n_stars: int,
    n_galaxies: int,
    filt: str,
    exptime: float,
    sky: float | None,
    sky_gradient: float,
    snr_range: tuple[float, float],
    shape: tuple[int, int],
    defects: bool,
    min_sep: float,
) -> tuple[dict, np.ndarray]:
    if filt not in FILTERS:
        raise ValueError(f"unknown WFC3/IR filter {filt!r}; one of {sorted(FILTERS)}")
    flt = FILTERS[filt]
    rng = np.random.default_rng(seed)
    ny, nx = shape
    sky0 = flt.sky if sky is None else sky

    wcs_hdr = _wcs_header(rng, shape)
    wcs = WCS(wcs_hdr)

    # Sky: a plane tilted by `sky_gradient` (fractional change corner to corner).
    yy = np.linspace(-0.5, 0.5, ny, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, nx, dtype=np.float32)[None, :]
    gx, gy = rng.uniform(-1, 1, 2)
    skymap = (sky0 * (1.0 + sky_gradient * (gx * xx + gy * yy))).astype(np.float32)
    var_bg_px = (sky0 + _DARK) / exptime + (_READ_NOISE / exptime) ** 2  # (e-/s)^2

    model = np.zeros(shape, np.float32)
    kinds = ["star"] * n_stars + ["galaxy"] * n_galaxies
    nsrc = len(kinds)
    truth = np.zeros(nsrc, TRUTH_DTYPE)
    lo, hi = math.log(snr_range[0]), math.log(snr_range[1])

    fwhm = rng.uniform(1.3, 1.6, nsrc)
    r_eff = np.where(np.array(kinds) == "galaxy", np.exp(rng.uniform(0.0, math.log(5.0), nsrc)),
                     0.0)
    q = np.where(np.array(kinds) == "galaxy", rng.uniform(0.35, 1.0, nsrc), 1.0)
    pa = rng.uniform(-90.0, 90.0, nsrc)
    nser = np.where(np.array(kinds) == "galaxy", rng.uniform(0.8, 2.5, nsrc), 0.0)
    snr = np.exp(rng.uniform(lo, hi, nsrc))
    # One PSF FWHM per exposure is what a real image has; keep a small per-source scatter
    # only in the star list below (focus/breathing), the galaxies use the median.
    psf_fwhm = float(np.median(fwhm)) if nsrc else 1.45
    psf_kernel = _moffat_stamp(0.0, 0.0, psf_fwhm, 7)
    psf_kernel /= psf_kernel.sum()
    halves = np.where(r_eff > 0, np.clip(np.ceil(8.0 * r_eff), 12, 40), 10).astype(int)
    pos = _place(rng, np.maximum(r_eff, 1.0), halves + 2.0, shape, min_sep=min_sep)

    for i, kind in enumerate(kinds):
        x0, y0 = pos[i]
        ix, iy = round(x0), round(y0)
        dx, dy = x0 - ix, y0 - iy
        if kind == "star":
            half = int(halves[i])
            stamp = _moffat_stamp(dx, dy, fwhm[i], half)
            stamp /= stamp.sum()
            rap = 2.0 * fwhm[i]
            rr = np.hypot(*np.meshgrid(np.arange(-half, half + 1) - dx,
                                       np.arange(-half, half + 1) - dy))
            inap = rr <= rap
        else:
            half = int(halves[i])
            stamp = _sersic_stamp(dx, dy, r_eff=r_eff[i], n=nser[i], q=q[i],
                                  pa=math.radians(pa[i]), half=half)
            stamp = _convolve_same(stamp, psf_kernel)
            stamp = np.clip(stamp, 0.0, None)
            stamp /= stamp.sum()
            a_ap = max(2.0 * r_eff[i], 2.5)
            b_ap = max(a_ap * q[i], 2.5)
            gx_, gy_ = np.meshgrid(np.arange(-half, half + 1) - dx,
                                   np.arange(-half, half + 1) - dy)
            c, s = math.cos(math.radians(pa[i])), math.sin(math.radians(pa[i]))
            up = gx_ * c + gy_ * s
            vp = -gx_ * s + gy_ * c
            inap = (up / a_ap) ** 2 + (vp / b_ap) ** 2 <= 1.0
        frac = float(stamp[inap].sum())
        npix = float(inap.sum())
        vbg = var_bg_px * float(skymap[iy, ix]) / sky0
        flux = _flux_for_snr(float(snr[i]), frac, npix, vbg, exptime)
        model[iy - half : iy + half + 1, ix - half : ix + half + 1] += (flux * stamp).astype(
            np.float32)
        truth[i] = (i + 1, kind, x0 + 1.0, y0 + 1.0, 0.0, 0.0, flux,
                    flt.zeropoint_ab - 2.5 * math.log10(flux), snr[i],
                    fwhm[i] if kind == "star" else psf_fwhm, r_eff[i], q[i], pa[i], nser[i])

    if filt in DISPERSERS:
        # A grism spreads each source into its first-order spectrum along x: what SEP then
        # finds are spectra, not sources (the truth keeps the direct positions).
        length = DISPERSERS[filt]
        run = np.cumsum(np.pad(model, ((0, 0), (length, 0))), axis=1, dtype=np.float64)
        model = ((run[:, length:] - run[:, :-length]) / length).astype(np.float32)

    if nsrc:
        # 1-based pixel positions: origin=1, with SIP (all_pix2world applies it).
        ra, dec = wcs.all_pix2world(truth["x"], truth["y"], 1)
        truth["ra"], truth["dec"] = ra, dec

    counts = (model + skymap + _DARK) * exptime  # e- per pixel, noiseless
    var_counts = counts + _READ_NOISE**2
    err = (np.sqrt(var_counts) / exptime).astype(np.float32)
    noise = rng.standard_normal(shape, dtype=np.float32) * err
    sci = (model + skymap + noise).astype(np.float32)

    dq = np.zeros(shape, np.int16)
    samp = np.full(shape, _NSAMP - 1, np.int16)
    time = np.full(shape, exptime, np.float32)
    # Saturated cores: values come from the early reads (good), DQ says so, SAMP is short.
    sat = counts > _FULL_WELL
    dq[sat] |= DQ.SATURATED
    samp[sat] = 3
    time[sat] = np.float32(exptime * 3 / (_NSAMP - 1))
    if defects:
        npx = nx * ny
        flat = dq.reshape(-1)
        scif = sci.reshape(-1)
        errf = err.reshape(-1)
        dead = rng.choice(npx, int(0.0008 * npx), replace=False)
        flat[dead] |= DQ.BAD_DETECTOR
        scif[dead] = rng.normal(0.0, 0.02, dead.size)
        hot = rng.choice(npx, int(0.001 * npx), replace=False)
        flat[hot] |= DQ.HOT
        scif[hot] += rng.uniform(0.5, 25.0, hot.size).astype(np.float32)
        unstable = rng.choice(npx, int(0.0003 * npx), replace=False)
        flat[unstable] |= DQ.UNSTABLE
        scif[unstable] = rng.normal(0.0, 3.0, unstable.size).astype(np.float32)
        crs = rng.choice(npx, int(0.002 * npx), replace=False)
        flat[crs] |= DQ.CR_RAMP  # rejected in the ramp fit: the value is fine
        errf[crs] *= np.float32(1.1)
        # The "death star": a dead region near the bottom edge of the IR detector.
        cy, cx = 14, 350
        ds = (np.arange(ny)[:, None] - cy) ** 2 + (np.arange(nx)[None, :] - cx) ** 2 < 12**2
        dq[ds] |= DQ.BAD_DETECTOR
        sci[ds] = 0.0
        # Flat-field "blobs": flagged, already corrected by the flat, values are fine.
        for _ in range(4):
            by, bx = rng.integers(40, ny - 40), rng.integers(40, nx - 40)
            blob = ((np.arange(ny)[:, None] - by) ** 2 + (np.arange(nx)[None, :] - bx) ** 2
                    < 9**2)
            dq[blob] |= DQ.BAD_FLAT
    day = int(rng.integers(0, 5000))
    expstart = 55000.0 + day + float(rng.uniform(0, 1))
    return (
        {
            "sci": sci, "err": err, "dq": dq, "samp": samp, "time": time,
            "wcs": wcs_hdr, "flt": flt, "filter": filt, "exptime": exptime,
            "expstart": expstart, "ra": float(wcs_hdr["CRVAL1"]), "dec": float(wcs_hdr["CRVAL2"]),
            "sky": sky0, "model": model,
        },
        truth,
    )


def _mjd_to_date(mjd: float) -> tuple[str, str]:
    t = datetime(1858, 11, 17) + timedelta(days=mjd)
    return t.strftime("%Y-%m-%d"), t.strftime("%H:%M:%S")


def _assemble_flt(obs_id: str, r: dict, *, sci: np.ndarray | None = None,
                  include: tuple[str, ...] = ("SCI", "ERR", "DQ", "SAMP", "TIME")) -> bytes:
    date_obs, time_obs = _mjd_to_date(r["expstart"])
    prim = _primary_header(obs_id, r["flt"], r["filter"], exptime=r["exptime"],
                           date_obs=date_obs, time_obs=time_obs, expstart=r["expstart"],
                           ra=r["ra"], dec=r["dec"])
    prim["NEXTEND"] = len(include)
    parts = [_primary_bytes(prim)]
    expname = obs_id[:8] + "j"
    common = {"ROOTNAME": obs_id, "EXPNAME": expname}
    arrays = {"SCI": r["sci"] if sci is None else sci, "ERR": r["err"], "DQ": r["dq"],
              "SAMP": r["samp"], "TIME": r["time"]}
    units = {"SCI": "ELECTRONS/S", "ERR": "ELECTRONS/S", "DQ": "UNITLESS", "SAMP": "SAMPLES",
             "TIME": "SECONDS"}
    for name in include:
        extra: dict[str, Any] = dict(common)
        if name == "SCI":
            data = arrays[name]
            finite = data[np.isfinite(data)]
            extra.update({
                "SAMPTIME": (r["exptime"], "total integration time (sec)"),
                "SDQFLAGS": (31743, "serious data quality flags"),
                "GOODMIN": (float(finite.min()) if finite.size else 0.0,
                            "minimum value of good pixels"),
                "GOODMAX": (float(finite.max()) if finite.size else 0.0,
                            "maximum value of good pixels"),
                "SNRMIN": (0.0, "minimum signal to noise of good pixels"),
                "MDRIZSKY": (float(r["sky"]), "Sky value computed by AstroDrizzle"),
                "CRMASK": (False, "does this exposure have a CR mask?"),
            })
        wcs = r["wcs"] if name in ("SCI", "ERR", "DQ") else None
        hdr = _ext_header(name, units[name], wcs, extra)
        parts.append(_image_hdu_bytes(hdr, arrays[name]))
    return b"".join(parts)


@dataclass(frozen=True)
class SyntheticFlt:
    """A synthetic exposure: its FITS bytes, the truth, and the noiseless source model (e-/s,
    no sky) for aperture-matched truth comparisons."""

    data: bytes
    truth: np.ndarray
    model: np.ndarray


def synthesize_flt(
    obs_id: str = "icxe15wwq",
    *,
    seed: int = 0,
    n_stars: int = 120,
    n_galaxies: int = 180,
    filter: str = "F160W",
    exptime: float = 1302.93,
    sky: float | None = None,
    sky_gradient: float = 0.08,
    snr_range: tuple[float, float] = (3.0, 500.0),
    shape: tuple[int, int] = SHAPE,
    defects: bool = True,
    min_sep: float = 10.0,
) -> SyntheticFlt:
    """A synthetic WFC3/IR FLT, its truth and its source model.

    The truth is a structured array of ``TRUTH_DTYPE`` with 1-based x, y (FITS and
    SExtractor convention), ra/dec from the file's own WCS, total flux in e-/s and AB mag,
    and the S/N in the reference aperture described in the module docstring.
    """
    r, truth = _render(seed, n_stars=n_stars, n_galaxies=n_galaxies, filt=filter,
                       exptime=exptime, sky=sky, sky_gradient=sky_gradient,
                       snr_range=snr_range, shape=shape, defects=defects, min_sep=min_sep)
    return SyntheticFlt(_assemble_flt(obs_id, r), truth, r["model"])


def make_flt(obs_id: str = "icxe15wwq", **options: Any) -> tuple[bytes, np.ndarray]:
    """(FITS bytes, truth) of ``synthesize_flt(obs_id, **options)``."""
    flt = synthesize_flt(obs_id, **options)
    return flt.data, flt.truth


def archive_flt(dataset: str, filter: str = "F160W", **options: Any
                ) -> tuple[bytes, np.ndarray]:
    """(FITS bytes, truth) of the FLT the stand-in archive holds for an exposure: seeded by
    its name, through its filter where this module models it (five wide imaging filters and
    the grisms), else through F160W."""
    seed = int.from_bytes(dataset.encode(), "little") % (2**31)
    return make_flt(dataset, seed=seed, filter=filter if filter in FILTERS else "F160W",
                    **options)


def make_noise_flt(obs_id: str = "icxe15wwq", *, seed: int = 0, **kwargs: Any) -> bytes:
    """A source-free exposure: sky, gradient, noise and detector defects only."""
    data, _ = make_flt(obs_id, seed=seed, n_stars=0, n_galaxies=0, **kwargs)
    return data


def make_drz(obs_id: str = "icxe15010", *, seed: int = 0, n_stars: int = 120,
             n_galaxies: int = 180, filter: str = "F160W",
             exptime: float = 2605.86) -> tuple[bytes, np.ndarray]:
    """A DRZ-like product: SCI (e-/s), WHT (exposure-time weights), CTX (int32); no ERR/DQ.

    Same sources and WCS machinery as ``make_flt`` (a drizzled product has no SIP, so the WCS
    is plain TAN here); WHT is the effective exposure time per pixel, as AstroDrizzle's
    default ``final_wht_type = EXP`` writes it, with a strip of zero weight at one edge.
    """
    r, truth = _render(seed, n_stars=n_stars, n_galaxies=n_galaxies, filt=filter,
                       exptime=exptime, sky=None, sky_gradient=0.0, snr_range=(3.0, 500.0),
                       shape=SHAPE, defects=False, min_sep=10.0)
    wcs = fits.Header([c for c in r["wcs"].cards if c.keyword[:2] not in ("A_", "B_")])
    wcs["CTYPE1"], wcs["CTYPE2"] = "RA---TAN", "DEC--TAN"
    # Truth ra/dec for the plain TAN WCS of the drizzled frame.
    if len(truth):
        ra, dec = WCS(wcs).all_pix2world(truth["x"], truth["y"], 1)
        truth["ra"], truth["dec"] = ra, dec
    wht = np.full(SHAPE, exptime, np.float32)
    wht[:, :6] = 0.0
    sci = r["sci"].copy()
    sci[:, :6] = 0.0
    ctx = np.where(wht > 0, 3, 0).astype(np.int32)
    date_obs, time_obs = _mjd_to_date(r["expstart"])
    prim = _primary_header(obs_id, r["flt"], filter, exptime=exptime, date_obs=date_obs,
                           time_obs=time_obs, expstart=r["expstart"], ra=r["ra"], dec=r["dec"])
    prim["FILENAME"] = f"{obs_id}_drz.fits"
    prim["NEXTEND"] = 3
    common = {"ROOTNAME": obs_id, "EXPNAME": obs_id}
    parts = [_primary_bytes(prim)]
    for name, arr, unit in (("SCI", sci, "ELECTRONS/S"), ("WHT", wht, "UNITLESS"),
                            ("CTX", ctx, "UNITLESS")):
        parts.append(_image_hdu_bytes(_ext_header(name, unit, wcs, dict(common)), arr))
    return b"".join(parts), truth


def make_broken_flt(kind: str, obs_id: str = "icxe15wwq", *, seed: int = 0) -> bytes:
    """A damaged FLT for failure tests; ``kind`` is one of ``BROKEN_KINDS``.

    truncated: cut inside the ERR data; corrupt-header: the SCI header's END card and the
    cards before it overwritten with binary junk; no-sci: ERR, DQ, SAMP, TIME only;
    all-nan / all-zero: SCI (and, for all-zero, ERR) filled; wrong-shape: SCI 1014x507 while
    ERR and DQ are 1014x1014; cube: a 3-D SCI; not-fits: random bytes; empty: zero bytes.
    """
    if kind not in BROKEN_KINDS:
        raise ValueError(f"unknown broken kind {kind!r}; one of {BROKEN_KINDS}")
    if kind == "empty":
        return b""
    if kind == "not-fits":
        return np.random.default_rng(seed).bytes(3 * BLOCK)
    r, _ = _render(seed, n_stars=20, n_galaxies=20, filt="F160W", exptime=1302.93,
                   sky=None, sky_gradient=0.05, snr_range=(5.0, 200.0), shape=SHAPE,
                   defects=True, min_sep=10.0)
    if kind == "truncated":
        good = _assemble_flt(obs_id, r)
        return good[: len(good) // 3]
    if kind == "corrupt-header":
        spoilt = bytearray(_assemble_flt(obs_id, r))
        # Find the SCI header (the second HDU) and overwrite its last cards and END.
        start = spoilt.index(b"XTENSION= 'IMAGE   '")
        end = spoilt.index(b"END" + b" " * 77, start)
        junk = np.random.default_rng(seed).bytes(240 + 80)
        spoilt[end - 240 : end + 80] = junk
        return bytes(spoilt)
    if kind == "no-sci":
        return _assemble_flt(obs_id, r, include=("ERR", "DQ", "SAMP", "TIME"))
    if kind == "all-nan":
        return _assemble_flt(obs_id, r, sci=np.full(SHAPE, np.nan, np.float32))
    if kind == "all-zero":
        r["err"] = np.zeros(SHAPE, np.float32)
        return _assemble_flt(obs_id, r, sci=np.zeros(SHAPE, np.float32))
    if kind == "wrong-shape":
        return _assemble_flt(obs_id, r, sci=np.ascontiguousarray(r["sci"][:, :507]))
    # cube
    return _assemble_flt(obs_id, r, sci=np.stack([r["sci"], r["sci"]]))


def reprocess_flt(data: bytes, *, generation: int = 2, flat_change: float = 0.002) -> bytes:
    """The same exposure as the archive serves it after a reprocessing: a new flat field
    (SCI and ERR scaled by ``1 + flat_change``), a newer calwf3 in CAL_VER, the new flat's
    name in PFLTFILE and a keyword the newer pipeline writes (here REPROCNO = ``generation``).
    Same file name, same dataset, different bytes: a new ETag at the same key."""
    import io

    with fits.open(io.BytesIO(data)) as hdul:
        hdul[0].header["CAL_VER"] = (f"3.7.{2 + generation}(2025)", "CALWF3 code version")
        hdul[0].header["PFLTFILE"] = (f"iref$repro{generation:03d}_pfl.fits",
                                      "pixel to pixel flat field file name")
        hdul[0].header["REPROCNO"] = (generation, "stand-in: pipeline reprocessing number")
        for name in ("SCI", "ERR"):
            hdul[name].data = (hdul[name].data * np.float32(1 + flat_change)).astype(np.float32)
        out = io.BytesIO()
        hdul.writeto(out)
    return out.getvalue()
