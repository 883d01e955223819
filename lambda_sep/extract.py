"""SEP background, detection and photometry for one HST exposure.

``extract`` runs the stages in order; each is a function of its own below:

1. **mask** (``_mask``): DQ bits in ``dq_mask`` (default: the WFC3 bits that mean "this value
   is wrong") and non-finite SCI; ERR (or WHT) <= 0 or non-finite where that plane is used;
2. **noise plane** (``_choose_noise_plane``): ERR for an FLT (it includes the sources'
   Poisson noise), WHT scaled to the background rms for a DRZ; a plane that is unusable
   (<= 0 or non-finite on most good pixels, or constant) is replaced by the background rms
   map, and the header says so;
3. **background** (``prepare`` runs stages 1-3): ``sep.Background`` on the masked image with
   ``bw``x``bh`` meshes filtered ``fw``x``fh`` (SExtractor's BACK_SIZE / BACK_FILTERSIZE),
   subtracted in place; masked pixels are then exactly 0 with noise ``MASKED_NOISE``, so they
   carry no weight anywhere (SEP's own mask is not applied to the first lines it buffers);
4. **detection** (``_detect``), with a pixel stack sized to need (SEP's default first, the
   ``pixstack`` limit only for a field that fills it): a Gaussian kernel (``filter_fwhm``
   over ``filter_size``^2 pixels), thresholding at ``thresh`` times the noise (of the
   *filtered* image with ``filter_type = "matched"``, SEP's matched filter; of the pixel
   with ``"conv"``, SExtractor's convolution); a detection whose isophote is mostly masked
   pixels is dropped;
5. **Kron** (``_kron``) and **AUTO photometry** (``_auto``): Kron radius within 6 isophotal
   radii (SExtractor's KRON_NSIG), aperture scale ``max(kron_factor * kron_radius,
   kron_min_radius)`` (PHOT_AUTOPARAMS), whole pixels whose centres fall inside, a circle of
   diameter ``auto_min_diameter`` when the ellipse is smaller (PHOT_AUTOAPERS), centred on the
   isophotal barycentre;
6. **apertures** (``_apertures``): circles of ``aper_radii``, 5x5 sub-pixels (APER_OVERSAMP);
7. **windowed positions** (``_windowed``): XWIN/YWIN with sigma = 2 r_half / 2.35, kept
   whether or not masked pixels lie in the window; the barycentre only where the windowed
   step failed (flags_win 1);
8. **flags** (``_dq_flags``): the OR of DQ bits over each isophote;
9. **sky and magnitudes** (``_sky``, ``_magnitudes``): ra/dec through the SCI WCS (with SIP
   when the header has it; the model used goes to the header as WCSMODEL), AB magnitudes
   from PHOTFLAM/PHOTPLAM or PHOTFNU.

Masked pixels in an aperture (bad pixels and, with ``mask_neighbours``, other sources'
isophotes) are left out of the sum and SEP scales the sum by total area over unmasked area:
the masked area is filled with the aperture's mean unmasked value. ``flags_*`` bit 32 marks
such apertures and ``maskfrac_*`` says how much of the area was filled (docs/CATALOG.md).
Positions are reported 1-based as FITS and SExtractor do.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import sep
from astropy.wcs import WCS

from lambda_sep.columns import COLUMNS
from lambda_sep.fitsread import Image, ImageError
from lambda_sep.params import SepParams, finite_number

__all__ = [
    "FLAG_CIRCULAR",
    "FLAG_KRON_MASKED",
    "FLAG_KRON_MIN",
    "FLAG_WIN_FAILED",
    "MASKED_NOISE",
    "Extraction",
    "Frame",
    "detection_equivalent",
    "extract",
    "gaussian_kernel",
    "prepare",
    "zeropoint",
]

# mastmirror's own bits in ``flags_auto``, above SEP's APER_* bits (16..128).
FLAG_KRON_MIN = 256  # no usable Kron radius: the minimum aperture scale was used
FLAG_CIRCULAR = 512  # the circular PHOT_AUTOAPERS fallback aperture was used
FLAG_KRON_MASKED = 1024  # masked pixels within the Kron-radius search ellipse (6 radii)
FLAG_WIN_FAILED = 1  # in ``flags_win``: the windowed step failed, x/y are the barycentre

KRON_NSIG = 6.0  # SExtractor's fixed search ellipse for the Kron radius, in isophotal radii
# The pixel stack of a first extraction: SEP's default, enough for every WFC3/IR frame but
# the densest (docs/BENCHMARKS.md); those go again with ``SepParams.pixstack``.
FIRST_PIXSTACK = 300_000
WINPOS_NSIG = 4.0  # SEP's and SExtractor's windowed-position radius, in sigmas
# The noise of a masked pixel: zero weight in the matched filter, never above a threshold,
# and its variance still a finite float32.
MASKED_NOISE = np.float32(1e15)
MAX_MASKED_ISOPHOTE = 0.5  # a detection more than half made of masked pixels is dropped
MAX_MASKED_WINDOW = 0.5  # a window more than half masked gives no windowed position
# A noise plane that is <= 0 or non-finite on more than this share of the good pixels is
# not a noise map (grizli's quantised FLTs have ERR = 0 almost everywhere).
MAX_BAD_NOISE_SHARE = 0.5


def gaussian_kernel(fwhm: float, size: int) -> np.ndarray | None:
    """A ``size`` x ``size`` Gaussian of ``fwhm`` pixels sampled at pixel centres (peak 1),
    like SExtractor's gauss_<fwhm>_<size>x<size>.conv; None when ``fwhm`` is 0."""
    if fwhm <= 0:
        return None
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma * sigma))
    return g.astype(np.float32)


def detection_equivalent(params: SepParams) -> float:
    """The threshold as SExtractor's DETECT_THRESH: in units of the per-pixel noise, on the
    image convolved with the normalised kernel. SEP's matched filter thresholds
    sum(k d / s^2) / sqrt(sum(k^2 / s^2)); at uniform noise s that is the kernel-weighted
    mean above ``thresh * s * sqrt(sum k^2) / sum k``."""
    kernel = gaussian_kernel(params.filter_fwhm, params.filter_size)
    if params.filter_type == "conv" or kernel is None:
        return params.thresh
    k = kernel.astype(np.float64)
    return params.thresh * math.sqrt(float((k * k).sum())) / float(k.sum())


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
    """Measured sources (one array per entry of ``columns.COLUMNS``) and the numbers the
    catalog header records."""

    columns: dict[str, np.ndarray]
    background: float  # global background level (BUNIT)
    background_rms: float
    zeropoint: float | None
    zeropoint_source: str
    flux_unit: str
    masked_pixels: int
    noise_source: str  # "ERR", "WHT", "background rms"
    noise_note: str  # why a noise plane was not used, what was replaced ('' = nothing)
    noise_replaced: int  # unmasked pixels whose noise (<= 0 or non-finite) was replaced
    noise_median: float  # median noise of the unmasked pixels (BUNIT)
    dropped_masked: int  # detections dropped for being mostly masked pixels
    wcs_ok: bool
    wcs_model: str  # projection and distortion: "TAN-SIP", "TAN" (linear), "" (no WCS)

    @property
    def count(self) -> int:
        """Number of sources."""
        return len(self.columns["number"])


_BUNITS = {"ELECTRONS/S": "electron / s", "ELECTRONS": "electron", "COUNTS/S": "ct / s",
           "COUNTS": "ct", "ELECTRONS/SEC": "electron / s"}


# ------------------------------------------------------------------ 1-2. mask, noise plane


def _bad_noise(plane: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        # NaN compares false: one test finds NaN, zero, negative and infinite noise.
        return ~((plane > 0) & (plane < np.inf))


def _choose_noise_plane(image: Image, good: np.ndarray
                        ) -> tuple[str, np.ndarray | None, np.ndarray | None, str]:
    """The noise plane: ("ERR" | "WHT" | "background rms", the plane or None, where the
    plane is <= 0 or non-finite, why a plane present was not used)."""
    for name, plane in (("ERR", image.err), ("WHT", image.wht)):
        if plane is None:
            continue
        bad = _bad_noise(plane)
        usable = good & ~bad
        n_good = int(np.count_nonzero(good))
        n_bad = n_good - int(np.count_nonzero(usable))
        if n_good and n_bad > MAX_BAD_NOISE_SHARE * n_good:
            return ("background rms", None, None, f"{name} unusable: <= 0 or non-finite on "
                    f"{n_bad / n_good:.1%} of good pixels")
        if name == "WHT":  # a relative weight: constant means uniform noise
            return name, plane, bad, ""
        # ERR holds the sources' Poisson noise: a constant one is a placeholder.
        lo = float(np.min(plane, where=usable, initial=np.inf))
        hi = float(np.max(plane, where=usable, initial=-np.inf))
        if lo == hi:
            return ("background rms", None, None,
                    f"{name} unusable: constant ({lo:g}) on good pixels")
        return name, plane, bad, ""
    return "background rms", None, None, ""


def _mask(image: Image, params: SepParams) -> tuple[np.ndarray, str, np.ndarray | None, str]:
    """The bad-pixel mask, the noise plane's name, the plane, and the note on it."""
    sci = image.sci
    flat = sci.ravel()
    # fmin/fmax skip NaN without copying the image (this runs on every invocation).
    lo, hi = float(np.fmin.reduce(flat)), float(np.fmax.reduce(flat))
    if not (math.isfinite(lo) or math.isfinite(hi)):
        raise ImageError("SCI has no finite pixels (all NaN or infinite)")
    if lo == hi:
        raise ImageError(f"SCI is constant: every finite pixel is {lo:g} (no data)")
    mask = ~np.isfinite(sci)
    if image.dq is not None and params.dq_mask:
        mask |= (image.dq & params.dq_mask) != 0
    source, plane, bad, note = _choose_noise_plane(image, ~mask)
    if bad is not None:
        mask |= bad
    usable = mask.size - int(np.count_nonzero(mask))
    if usable < max(1000, mask.size // 100):
        raise ImageError(_unusable_reason(image, params, bad, source, usable))
    return mask, source, plane, note


def _unusable_reason(image: Image, params: SepParams, bad_noise: np.ndarray | None,
                     source: str, usable: int) -> str:
    """Which planes left too few usable pixels, with how many each excludes."""
    causes = {"SCI non-finite": int(np.count_nonzero(~np.isfinite(image.sci)))}
    if image.dq is not None and params.dq_mask:
        causes[f"DQ & {params.dq_mask}"] = int(np.count_nonzero(image.dq & params.dq_mask))
    if bad_noise is not None:
        causes[f"{source} <= 0 or non-finite"] = int(np.count_nonzero(bad_noise))
    worst = max(causes, key=lambda k: causes[k])
    counts = ", ".join(f"{k}: {v}" for k, v in causes.items())
    return (f"only {usable} of {image.sci.size} pixels are usable after masking, mostly "
            f"because of {worst} ({counts})")


# ------------------------------------------------------------------ 3. background, noise


@dataclass
class Frame:
    """The prepared image: background-subtracted SCI (0 at masked pixels), its mask, the
    per-pixel noise (``MASKED_NOISE`` at masked pixels), the background map and SEP's
    background object, and what was done to the noise."""

    sci: np.ndarray
    mask: np.ndarray
    noise: np.ndarray
    gain: float | None  # for the sources' Poisson noise; None when the noise includes it
    back: np.ndarray
    bkg: Any  # sep.Background
    source: str
    note: str
    replaced: int
    _areas: tuple[np.ndarray, np.ndarray] | None = None

    def area_images(self) -> tuple[np.ndarray, np.ndarray]:
        """An all-ones image and the unmasked-pixel image (1/0), made on first need."""
        if self._areas is None:
            self._areas = (np.ones(self.sci.shape, np.float32),
                           (~self.mask).astype(np.float32))
        return self._areas


def _poisson_gain(image: Image) -> float | None:
    """Electrons per (BUNIT) unit for the sources' Poisson noise, when BUNIT says so."""
    bunit = str(image.keyword("BUNIT", "") or "").strip().upper()
    exptime = image.keyword("EXPTIME")
    if bunit == "ELECTRONS":
        return 1.0
    if _BUNITS.get(bunit) == "electron / s" and finite_number(exptime) and exptime > 0:
        return float(exptime)
    return None


def _quantum(image: Image) -> float:
    """The step between SCI's stored values: BSCALE for integer data, 0 for floating point."""
    bitpix = image.sci_header.get("BITPIX")
    if not (isinstance(bitpix, int) and bitpix > 0):
        return 0.0
    bscale = image.sci_header.get("BSCALE", 1.0)
    return abs(float(bscale)) if finite_number(bscale) and bscale else 1.0


def _repair_noise(noise: np.ndarray, mask: np.ndarray, image: Image, source: str
                  ) -> tuple[int, list[str]]:
    """Make the noise > 0 and finite on every unmasked pixel, in place; return how many
    values changed and what was done."""
    notes = []
    step = _quantum(image)
    floor = np.float32(step / math.sqrt(12.0))
    low = np.zeros(0, bool)
    if step:
        # An integer-valued SCI (grizli's test FLTs) knows no value better than its
        # rounding, whatever a clipped background rms over a flat sky says.
        with np.errstate(invalid="ignore"):
            low = (noise < floor) & ~mask
        np.copyto(noise, floor, where=low)
        if low.any():
            notes.append(f"SCI quantised (step {step:g}): {np.count_nonzero(low)} noise "
                         f"values raised to step/sqrt(12) = {floor:.4g}")
    # ERR is used only where it is > 0 and finite; a derived map may still hold zeros.
    bad = _bad_noise(noise) & ~mask if source != "ERR" else np.zeros(0, bool)
    if bad.any():
        good = noise[~mask & ~bad]
        if not good.size:
            raise ImageError(f"no usable noise estimate: the {source} of SCI is <= 0 or "
                             "non-finite on every usable pixel")
        fill = float(np.median(good))
        np.copyto(noise, np.float32(fill), where=bad)
        notes.append(f"{np.count_nonzero(bad)} {source} values <= 0 or non-finite set to "
                     f"the median {fill:.4g}")
    return int(np.count_nonzero(low)) + int(np.count_nonzero(bad)), notes


def prepare(image: Image, params: SepParams) -> Frame:
    """Stages 1-3: mask, noise plane, background, on ``image``'s arrays in place."""
    mask, source, plane, note = _mask(image, params)
    sci = image.sci  # a decoded copy of ours: work in place
    np.copyto(sci, np.float32(0.0), where=mask)
    bkg = sep.Background(sci, mask=mask, bw=params.bw, bh=params.bh, fw=params.fw,
                         fh=params.fh, fthresh=params.fthresh)
    back = bkg.back()
    np.subtract(sci, back, out=sci)
    np.copyto(sci, np.float32(0.0), where=mask)
    gain: float | None = None
    if source == "ERR":
        assert plane is not None
        noise = plane  # ours too; masked pixels get MASKED_NOISE below
    elif source == "WHT":
        assert plane is not None
        med = float(np.median(plane[~mask]))
        with np.errstate(divide="ignore", invalid="ignore"):
            noise = (bkg.globalrms * np.sqrt(med / plane)).astype(np.float32)
        # DRZ WHT (final_wht_type EXP) is exposure time: Poisson counts = flux * EXPTIME.
        exptime = image.keyword("EXPTIME")
        gain = float(exptime) if finite_number(exptime) and exptime > 0 else None
    else:
        noise = bkg.rms()
        gain = _poisson_gain(image)
    replaced, notes = _repair_noise(noise, mask, image, source)
    note = "; ".join(filter(None, (note, *notes)))
    np.copyto(noise, MASKED_NOISE, where=mask)
    return Frame(sci, mask, noise, gain, back, bkg, source, note, replaced)


# ------------------------------------------------------------------ 4. detection


@dataclass
class _Sources:
    objs: np.ndarray  # SEP's detections that are kept
    segmap: np.ndarray  # SEP's segmentation map (ids of every detection, kept or not)
    ids: np.ndarray  # segmentation ids of the kept detections
    dropped: int  # detections dropped for being mostly masked pixels


def _pixel_stacks(params: SepParams) -> tuple[int, ...]:
    """The pixel stacks to try, smallest first: SEP allocates and walks the whole stack on
    every extract (3,000,000 pixels cost more than detecting an ordinary frame's sources),
    while an ordinary frame needs a tenth of it; a dense field that fills the first is
    extracted again with ``params.pixstack``, the most allowed."""
    first = min(FIRST_PIXSTACK, params.pixstack)
    return (first,) if first == params.pixstack else (first, params.pixstack)


def _detect(frame: Frame, params: SepParams) -> _Sources:
    # Dense fields need a bigger sub-object limit than SEP's default too.
    sep.set_sub_object_limit(params.sub_object_limit)
    stacks = _pixel_stacks(params)
    for pixstack in stacks:
        sep.set_extract_pixstack(pixstack)
        try:
            objs, segmap = sep.extract(
                frame.sci, params.thresh, err=frame.noise, mask=frame.mask,
                minarea=params.minarea,
                filter_kernel=gaussian_kernel(params.filter_fwhm, params.filter_size),
                filter_type=params.filter_type, deblend_nthresh=params.deblend_nthresh,
                deblend_cont=params.deblend_cont, clean=params.clean,
                clean_param=params.clean_param, segmentation_map=True,
            )
            break
        except Exception as exc:  # SEP raises bare Exception for its internal limits
            if pixstack == stacks[-1] or "pixel buffer full" not in str(exc):
                raise ImageError(f"SEP extraction failed: {exc}") from exc
    n = len(objs)
    ids = np.arange(1, n + 1, dtype=np.int32)
    if not n:
        return _Sources(objs, segmap, ids, 0)
    # The matched filter sees masked pixels' neighbours, so masked pixels can join an
    # isophote; a detection made mostly of them is not a source.
    masked_members = np.bincount(segmap[frame.mask], minlength=n + 1)[1:]
    keep = masked_members <= MAX_MASKED_ISOPHOTE * objs["npix"]
    return _Sources(objs[keep], segmap, ids[keep], int(n - np.count_nonzero(keep)))


# ------------------------------------------------------------------ 5-6. Kron, AUTO, apertures


@dataclass
class _Shape:
    a: np.ndarray  # isophotal axes and angle, with (1, 1, 0) where SEP gave no usable shape
    b: np.ndarray
    theta: np.ndarray
    valid: np.ndarray

    @classmethod
    def of(cls, objs: np.ndarray) -> _Shape:
        a, b = objs["a"], objs["b"]
        valid = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
        # SEP's float32 theta can round past +-pi/2 in float64, which its apertures refuse.
        theta = np.clip(objs["theta"].astype(np.float64), -math.pi / 2, math.pi / 2)
        return cls(np.where(valid, a, 1.0), np.where(valid, b, 1.0),
                   np.where(valid, theta, 0.0), valid)


@dataclass
class _Auto:
    flux: np.ndarray
    fluxerr: np.ndarray
    flags: np.ndarray
    maskfrac: np.ndarray
    scale: np.ndarray  # Kron scale applied to a, b
    circle: np.ndarray  # the circular PHOT_AUTOAPERS aperture was used
    circ_radius: float


@dataclass
class _Apertures:
    """A set of SEP apertures: ``call(image, *args)`` is sep.sum_circle or sum_ellipse;
    other sources' pixels are left out unless ``ids`` is None."""

    call: Any
    args: tuple
    ids: np.ndarray | None
    segmap: np.ndarray
    subpix: int

    def sum(self, image: np.ndarray, *, neighbours: bool = True, **kw: Any
            ) -> tuple[np.ndarray, ...]:
        """SEP's (sum, error, flags) over ``image``; ``neighbours=False`` keeps them in."""
        seg = {"seg_id": self.ids, "segmap": self.segmap} \
            if neighbours and self.ids is not None else {}
        with np.errstate(divide="ignore", invalid="ignore"):
            flux, fluxerr, flag = self.call(image, *self.args, subpix=self.subpix, **seg, **kw)
        return flux, fluxerr, np.asarray(flag, np.int32)

    def subset(self, sel: np.ndarray) -> _Apertures:
        """The apertures of the sources in ``sel``."""
        return _Apertures(self.call, tuple(v[sel] for v in self.args),
                          None if self.ids is None else self.ids[sel], self.segmap, self.subpix)

    def photometry(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                  np.ndarray]:
        """Flux, error, SEP's flags and the masked fraction of each aperture (0 unless SEP
        flagged it as holding masked pixels)."""
        flux, fluxerr, flags = self.sum(frame.sci, err=frame.noise, mask=frame.mask,
                                        gain=frame.gain)
        frac = np.zeros(len(flags), np.float32)
        hit = (flags & sep.APER_HASMASKED) != 0
        if hit.any():
            frac[hit] = self.subset(hit).masked_fraction(frame)
            # SEP also flags a masked pixel that touches the edge without overlapping the
            # aperture: the flag says "holds masked area", as maskfrac does.
            flags = np.where(frac > 0, flags, flags & ~sep.APER_HASMASKED)
        return flux, fluxerr, flags, frac

    def masked_fraction(self, frame: Frame) -> np.ndarray:
        """1 - unmasked/total area: the sums of an all-ones image and of the unmasked-pixel
        image with the same neighbour masking, both without a mask (SEP rescales a sum
        only when it is given one)."""
        ones, unmasked = frame.area_images()
        total = self.sum(ones, neighbours=False)[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.clip(1.0 - self.sum(unmasked)[0] / total, 0.0, 1.0)


def _kron(frame: Frame, sources: _Sources, shape: _Shape, params: SepParams
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kron scale per source, whether the Kron radius was usable, SEP's Kron flags."""
    objs = sources.objs
    seg = {"seg_id": sources.ids, "segmap": sources.segmap} if params.mask_neighbours else {}
    kron, kflag = sep.kron_radius(frame.sci, objs["x"], objs["y"], shape.a, shape.b,
                                  shape.theta, KRON_NSIG, mask=frame.mask, **seg)
    ok = np.isfinite(kron) & (kron > 0) & shape.valid
    scale = np.where(ok, np.maximum(params.kron_factor * np.where(ok, kron, 0.0),
                                    params.kron_min_radius), params.kron_min_radius)
    # SEP's masked bit here is about the search ellipse, not the AUTO aperture: own bit.
    kflag = np.asarray(kflag, np.int32)
    masked = (kflag & sep.APER_HASMASKED) != 0
    kflag = np.where(masked, (kflag & ~sep.APER_HASMASKED) | FLAG_KRON_MASKED, kflag)
    return scale, ok, kflag


def _auto(frame: Frame, sources: _Sources, shape: _Shape, params: SepParams) -> _Auto:
    objs = sources.objs
    n = len(objs)
    x, y = objs["x"], objs["y"]
    ids = sources.ids if params.mask_neighbours else None
    scale, kron_ok, flags = _kron(frame, sources, shape, params)
    circ_r = params.auto_min_diameter / 2.0
    circle = (scale * np.sqrt(shape.a * shape.b) <= circ_r) | ~shape.valid
    circ_radius = max(circ_r, params.kron_min_radius)
    flux, fluxerr, maskfrac = np.zeros(n), np.zeros(n), np.zeros(n, np.float32)
    ellipses = _Apertures(sep.sum_ellipse, (x, y, shape.a, shape.b, shape.theta, scale), ids,
                          sources.segmap, 1)
    circles = _Apertures(sep.sum_circle, (x, y, np.full(n, circ_radius)), ids,
                         sources.segmap, 1)
    for sel, apertures in ((~circle, ellipses), (circle, circles)):
        if sel.any():
            flux[sel], fluxerr[sel], fl, maskfrac[sel] = \
                apertures.subset(sel).photometry(frame)
            flags[sel] |= fl
    flags |= np.where(kron_ok, 0, FLAG_KRON_MIN)
    flags |= np.where(circle, FLAG_CIRCULAR, 0)
    return _Auto(flux, fluxerr, flags, maskfrac, scale, circle, circ_radius)


def _apertures(frame: Frame, sources: _Sources, params: SepParams) -> dict[str, np.ndarray]:
    n, naper = len(sources.objs), len(params.aper_radii)
    out: dict[str, np.ndarray] = {
        "flux_aper": np.zeros((n, naper)), "fluxerr_aper": np.zeros((n, naper)),
        "flags_aper": np.zeros((n, naper), np.int32),
        "maskfrac_aper": np.zeros((n, naper), np.float32)}
    ids = sources.ids if params.mask_neighbours else None
    x, y = sources.objs["x"], sources.objs["y"]
    for j, r in enumerate(params.aper_radii):
        apertures = _Apertures(sep.sum_circle, (x, y, np.full(n, r)), ids, sources.segmap, 5)
        (out["flux_aper"][:, j], out["fluxerr_aper"][:, j], out["flags_aper"][:, j],
         out["maskfrac_aper"][:, j]) = apertures.photometry(frame)
    return out


# ------------------------------------------------------------------ 7. windowed positions


def _windowed(frame: Frame, sources: _Sources, auto: _Auto, shape: _Shape, *,
              params: SepParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Half-light radius, windowed x and y (0-based), flags_win."""
    objs = sources.objs
    n = len(objs)
    if not n:
        return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, np.int32)
    x, y = objs["x"], objs["y"]
    # SExtractor leaves masked pixels out (they are 0 in frame.sci), so the growth curve
    # is taken without SEP's mask fill and normalised by the AUTO flux without its fill.
    normflux = np.where(auto.flux > 0, auto.flux * (1.0 - auto.maskfrac), np.nan)
    # Half the AUTO flux lies inside the AUTO ellipse, so a circle of its semi-major axis
    # bounds the search (smaller than SEP's customary 6a: the cost grows as rmax^2).
    rmax = np.maximum(np.where(auto.circle, auto.circ_radius, auto.scale * shape.a), 1.0)
    seg = {"seg_id": sources.ids, "segmap": sources.segmap} if params.mask_neighbours else {}
    rhalf, _ = sep.flux_radius(frame.sci, x, y, rmax, 0.5, normflux=normflux,
                               subpix=5, **seg)
    rhalf = np.where(auto.flux > 0, rhalf, np.nan)
    sig = 2.0 / 2.35 * np.where(np.isfinite(rhalf) & (rhalf > 0), rhalf, 1.0)
    # Exact pixel overlap (subpix=0) is faster than SExtractor's 11x11 sampling and
    # closer to the exact answer. The mask only flags the windows that hold masked pixels:
    # SEP would count those as the window's unmasked mean, SExtractor leaves them out (its
    # BLANK), so those windows run again without it (masked pixels are 0 in frame.sci).
    xwin, ywin, wflag = sep.winpos(frame.sci, x, y, sig, mask=frame.mask, subpix=0)
    flags = np.asarray(wflag, np.int32)
    hit = (flags & sep.APER_HASMASKED) != 0
    if hit.any():
        xwin[hit], ywin[hit], _ = sep.winpos(frame.sci, x[hit], y[hit], sig[hit], subpix=0)
    h, w = frame.sci.shape
    failed = ~(np.isfinite(xwin) & np.isfinite(ywin))
    # SEP stops at once, leaving the start, when the window holds no positive flux.
    failed |= (xwin == x) & (ywin == y)
    # A centroid that ran off its object, or off the image, is worse than the barycentre.
    failed |= np.hypot(xwin - x, ywin - y) >= np.maximum(2.0, shape.a)
    failed |= (xwin < -0.5) | (xwin > w - 0.5) | (ywin < -0.5) | (ywin > h - 0.5)
    hit &= ~failed
    if hit.any():
        window = _Apertures(sep.sum_circle, (xwin[hit], ywin[hit], WINPOS_NSIG * sig[hit]),
                            None, sources.segmap, 0)
        frac = window.masked_fraction(frame)
        failed[np.flatnonzero(hit)[frac > MAX_MASKED_WINDOW]] = True
    flags = np.where(failed, flags | FLAG_WIN_FAILED, flags)
    return rhalf, np.where(failed, x, xwin), np.where(failed, y, ywin), flags


# ------------------------------------------------------------------ 8. DQ flags


def _dq_flags(image: Image, sources: _Sources) -> np.ndarray:
    """The OR of the DQ bits over each kept source's isophote (saturation, CR, ...)."""
    n = len(sources.objs)
    if not n or image.dq is None:
        return np.zeros(n, np.int32)
    dq_flat = image.dq.ravel()
    members = sources.segmap.ravel()
    sel = np.flatnonzero((dq_flat != 0) & (members != 0))  # few pixels: flagged ones
    every = np.zeros(len(sources.objs) + sources.dropped + 1, np.int32)
    np.bitwise_or.at(every, members[sel], dq_flat[sel].astype(np.int32))
    return every[sources.ids]


# ------------------------------------------------------------------ 9. sky, magnitudes


def _sky(image: Image, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """ra, dec of 0-based pixel positions and the model used: the projection with "-SIP"
    when SIP distortion was applied ("TAN-SIP", "TAN"), "" when the header has no celestial
    WCS (ra/dec are NaN). Lookup-table distortions (D2IM, NPOL) need files not in the
    header and are not applied."""
    ra = np.full(len(x), np.nan)
    dec = np.full(len(x), np.nan)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # HST headers trip astropy's FITS WCS fixers
            wcs = WCS(image.sci_header)
            if not wcs.has_celestial:
                return ra, dec, ""
            if len(x):
                ra, dec = wcs.all_pix2world(x + 1.0, y + 1.0, 1)
            projection = str(wcs.wcs.ctype[0])[5:8]
            return (np.asarray(ra), np.asarray(dec),
                    projection + ("-SIP" if wcs.sip is not None else ""))
    except Exception:
        return ra, dec, ""


def _flux_unit(image: Image) -> tuple[str, float]:
    """The astropy flux unit of BUNIT and the factor to a rate (NaN when it cannot be had)."""
    bunit = str(image.keyword("BUNIT", "") or "").strip().upper()
    per_second = 1.0
    if bunit in ("ELECTRONS", "COUNTS"):  # magnitudes need a rate
        exptime = image.keyword("EXPTIME")
        per_second = 1.0 / float(exptime) if finite_number(exptime) and exptime > 0 else math.nan
    return _BUNITS.get(bunit, ""), per_second


def _magnitudes(flux: np.ndarray, fluxerr: np.ndarray, zp: float | None, per_second: float
                ) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        pos = flux > 0
        mag = np.where(pos, (zp if zp is not None else np.nan)
                       - 2.5 * np.log10(np.where(pos, flux * per_second, 1.0)), np.nan)
        magerr = np.where(pos, 2.5 / math.log(10.0) * fluxerr / np.where(pos, flux, 1.0),
                          np.nan)
    return mag, magerr


# ------------------------------------------------------------------ the whole


def extract(image: Image, params: SepParams) -> Extraction:
    """Background, detection and photometry of ``image`` (its arrays are worked on in place).
    Raises ``ImageError`` when the image has no usable data (all NaN, constant, almost
    everything masked, no usable noise)."""
    frame = prepare(image, params)
    sources = _detect(frame, params)
    objs = sources.objs
    shape = _Shape.of(objs)
    auto = _auto(frame, sources, shape, params)
    aper = _apertures(frame, sources, params)
    rhalf, xwin, ywin, flags_win = _windowed(frame, sources, auto, shape, params=params)
    x, y = (xwin, ywin) if params.windowed else (objs["x"], objs["y"])
    ra, dec, wcs_model = _sky(image, x, y)
    zp, zp_source = zeropoint(image)
    flux_unit, per_second = _flux_unit(image)
    mag_auto, magerr_auto = _magnitudes(auto.flux, auto.fluxerr, zp, per_second)
    mag_aper, magerr_aper = _magnitudes(aper["flux_aper"], aper["fluxerr_aper"], zp,
                                        per_second)
    iy = np.clip(objs["ycpeak"], 0, frame.sci.shape[0] - 1)
    ix = np.clip(objs["xcpeak"], 0, frame.sci.shape[1] - 1)
    values: dict[str, Any] = {
        "number": np.arange(1, len(objs) + 1),
        "x": x + 1.0, "y": y + 1.0, "ra": ra, "dec": dec,
        "x_bary": objs["x"] + 1.0, "y_bary": objs["y"] + 1.0,
        "a": objs["a"], "b": objs["b"], "theta": np.degrees(objs["theta"]),
        "npix": objs["npix"],
        # SExtractor's KRON_RADIUS: the scale actually applied to a, b (0 for a circle).
        "kron_radius": np.where(auto.circle, 0.0, auto.scale),
        "flux_auto": auto.flux, "fluxerr_auto": auto.fluxerr,
        "mag_auto": mag_auto, "magerr_auto": magerr_auto,
        "mag_aper": mag_aper, "magerr_aper": magerr_aper,
        "flux_iso": objs["flux"], "flux_radius": rhalf, "peak": objs["peak"],
        "background": frame.back[iy, ix],
        "flags": objs["flag"], "flags_auto": auto.flags, "flags_win": flags_win,
        "flags_dq": _dq_flags(image, sources), "maskfrac_auto": auto.maskfrac, **aper,
    }
    columns = {c.name: np.asarray(values[c.name], dtype=c.dtype) for c in COLUMNS}
    # A 1-in-16 sample is plenty for a median, and 16 times cheaper.
    sample = frame.noise[::4, ::4][~frame.mask[::4, ::4]]
    noise_median = float(np.median(sample)) if sample.size else math.nan
    return Extraction(
        columns=columns, background=float(frame.bkg.globalback),
        background_rms=float(frame.bkg.globalrms), zeropoint=zp, zeropoint_source=zp_source,
        flux_unit=flux_unit, masked_pixels=int(np.count_nonzero(frame.mask)),
        noise_source=frame.source, noise_note=frame.note, noise_replaced=frame.replaced,
        noise_median=noise_median, dropped_masked=sources.dropped,
        wcs_ok=bool(wcs_model), wcs_model=wcs_model,
    )
