"""The catalog file: a FITS binary table, one row per source, provenance in its header.

Layout: an empty primary HDU (ORIGIN, OBS_ID) and one ``BINTABLE`` extension ``CATALOG``
whose ``NAXIS2`` is the source count. The columns are ``lambda_sep.columns.COLUMNS``, in its
order, with its types; each has a ``TUNITn`` (astropy unit strings in the generic format,
``''`` for dimensionless numbers and flags) and its description as the comment of its
``TTYPEn`` card. The extension header records the input (bucket, key, ETag,
size, bytes read), the software versions, every extraction parameter (``HIERARCH SEP ...``),
the background level and rms, the photometric zero point, and the run-specific numbers
listed in ``RUN_SPECIFIC_KEYWORDS``. Everything else is a pure function of the input bytes
and the parameters, so reprocessing an exposure writes a byte-identical catalog apart from
those cards' values (whose cards stay in the same place with the same width).
"""

from __future__ import annotations

import dataclasses
import platform

import astropy
import numpy as np
import sep
from astropy.io import fits

from lambda_sep import __version__
from lambda_sep.columns import COLUMNS, FLUX
from lambda_sep.contract import (
    HDR_ATTEMPT,
    HDR_BYTES_READ,
    HDR_INPUT_ETAG,
    HDR_INPUT_SIZE,
    HDR_PEAK_RSS,
    HDR_PROCTIME,
    HDR_SOURCES,
)
from lambda_sep.extract import Extraction, detection_equivalent
from lambda_sep.fitsread import Image
from lambda_sep.params import SepParams

__all__ = ["EXTNAME", "RUN_SPECIFIC_KEYWORDS", "build_catalog", "param_keyword"]

EXTNAME = "CATALOG"
_BLOCK = 2880
# The cards whose values differ between two runs on the same input.
RUN_SPECIFIC_KEYWORDS = ("DATE", HDR_PROCTIME, HDR_PEAK_RSS, HDR_ATTEMPT)

_FORMATS = {
    np.dtype("int16"): "I",
    np.dtype("int32"): "J",
    np.dtype("int64"): "K",
    np.dtype("float32"): "E",
    np.dtype("float64"): "D",
}
# Input header keywords worth carrying into the catalog header (when present).
_COPIED = ("TELESCOP", "INSTRUME", "DETECTOR", "FILTER", "EXPTIME", "DATE-OBS", "TIME-OBS",
           "EXPSTART", "PROPOSID", "TARGNAME", "PHOTMODE", "PHOTFLAM", "PHOTPLAM", "PHOTFNU")


def _fit(key: str, value: object, comment: str) -> tuple[str, object, str]:
    """The card (key, value, comment) with the comment cut to what fits on its 80 columns,
    so astropy never truncates it (it warns when it does, and warnings may be errors)."""
    if len(key) <= 8 and not (isinstance(value, str) and len(value) > 60):
        # Fixed format: value in columns 11-30 (longer strings run on), then " / ".
        width = len("'" + value.replace("'", "''").ljust(8) + "'") if isinstance(value, str) \
            else 20
        start = 10 + max(width, 20) + 3
    else:
        image = fits.Card(key, value, "#").image  # HIERARCH, or a CONTINUEd long string
        if len(image) > fits.Card.length:
            return key, value, ""
        start = image.rstrip().rfind("/ #") + 2
    return key, value, comment[: max(fits.Card.length - start, 0)]


Card = tuple[str, object, str]


def _images(cards: list[Card]) -> str:
    """The cards' 80-column images, comments fitted, concatenated (no END, no padding)."""
    return fits.Header([_fit(*card) for card in cards]).tostring(endcard=False, padding=False)


# Formatting a card through astropy costs ~20 us; the column, version and parameter cards
# (about 120 of a catalog's 185) are the same for every catalog of a container, so their
# images are kept. The key carries each value's type: 1, 1.0 and True are equal in Python
# but are different cards.
_BLOCKS: dict[tuple, str] = {}


def _block(cards: list[Card]) -> str:
    """``_images(cards)``, formatted once per process for each distinct list of cards."""
    key = tuple((k, type(v), v, c) for k, v, c in cards)
    images = _BLOCKS.get(key)
    if images is None:
        if len(_BLOCKS) >= 64:  # a container that sees many parameter sets: start again
            _BLOCKS.clear()
        images = _BLOCKS[key] = _images(cards)
    return images


def param_keyword(name: str) -> str:
    """The header keyword of one SepParams field: ``HIERARCH SEP <NAME>``."""
    return f"HIERARCH SEP {name.upper()}"


def _round(value: float) -> float | str:
    """Six significant digits, so the card is the same on every machine; 'NaN' when none."""
    return float(f"{value:.6g}") if np.isfinite(value) else "NaN"


def _param_value(value: object) -> object:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return value


def _input_keywords(image: Image) -> list[Card]:
    """The cards of ``_COPIED`` that the input exposure has, with simple values."""
    cards: list[Card] = []
    for name in _COPIED:
        value = image.keyword(name)
        if value is None or isinstance(value, fits.card.Undefined):
            continue
        if isinstance(value, str | bool | int | float):
            cards.append((name, value, "from the input exposure"))
    return cards


def build_catalog(
    extraction: Extraction,
    image: Image,
    params: SepParams,
    *,
    obs_id: str,
    bucket: str,
    key: str,
    etag: str,
    attempt: int,
    processing_time: float,
    peak_rss_mb: float,
    date: str,
) -> bytes:
    """Serialise ``extraction`` as the catalog FITS file and return its bytes.

    ``processing_time`` (s), ``peak_rss_mb``, ``attempt`` and ``date`` (ISO 8601 UTC) are
    the run-specific values; everything else comes from the input and the parameters.
    """
    n = extraction.count
    columns = [(c, extraction.columns[c.name]) for c in COLUMNS]
    # The table is serialised directly (big-endian records after a header built from cards):
    # astropy's BinTableHDU machinery costs ~30 ms per catalog, this costs ~4 ms.
    dtype = np.dtype([(c.name, np.dtype(c.dtype).newbyteorder(">"), arr.shape[1:])
                      for c, arr in columns])
    rows = np.empty(n, dtype=dtype)
    head: list[Card] = [
        ("XTENSION", "BINTABLE", "binary table extension"),
        ("BITPIX", 8, "array data type"),
        ("NAXIS", 2, "number of array dimensions"),
        ("NAXIS1", dtype.itemsize, "[byte] length of a row"),
        (HDR_SOURCES, n, "number of rows (sources)"),
        ("PCOUNT", 0, "number of group parameters"),
        ("GCOUNT", 1, "number of groups"),
        ("TFIELDS", len(columns), "number of table fields"),
    ]
    described: list[Card] = []
    for i, (column, arr) in enumerate(columns, start=1):
        rows[column.name] = arr
        base = _FORMATS[np.dtype(column.dtype)]
        described.append((f"TTYPE{i}", column.name, column.description))
        described.append((f"TFORM{i}", f"{arr.shape[1]}{base}" if arr.ndim == 2 else base, ""))
        # Every column has a unit card; '' means dimensionless (counts, flags, ratios).
        unit = extraction.flux_unit if column.unit == FLUX else column.unit
        described.append((f"TUNIT{i}", unit, ""))
    described.append(("EXTNAME", EXTNAME, "extension name"))

    provenance: list[Card] = [
        ("ORIGIN", "mastmirror", "catalog made by mastmirror lambda_sep"),
        ("OBS_ID", obs_id, "dataset (ROOTNAME)"),
        ("INBUCKET", bucket, "input bucket or store"),
        ("INKEY", key, "input object key"),
        (HDR_INPUT_ETAG, etag, "input object ETag"),
        (HDR_INPUT_SIZE, image.size, "[byte] input object size"),
        (HDR_BYTES_READ, image.bytes_read, "[byte] input bytes read (ranged reads)"),
        ("NREADS", len(image.ranges), "ranged read requests"),
        ("INEXTS", ",".join(image.extensions), "input extensions walked"),
        *_input_keywords(image),
    ]

    versions: list[Card] = [
        ("MMVER", __version__, "mastmirror version"),
        ("SEPVER", sep.__version__, "SEP version"),
        ("ASTROVER", astropy.__version__, "astropy version"),
        ("NUMPYVER", np.__version__, "numpy version"),
        ("PYVER", platform.python_version(), "Python version"),
    ]

    detnsig = detection_equivalent(params)
    measured: list[Card] = [
        ("NSOURCES", extraction.count, "number of sources (= NAXIS2)"),
        ("BKGLEVEL", extraction.background, "global background level"),
        ("BKGRMS", extraction.background_rms, "global background rms"),
        ("NMASKED", extraction.masked_pixels, "pixels masked (DQ, non-finite, ERR<=0)"),
        ("NOISESRC", extraction.noise_source, "per-pixel noise used"),
        ("NOISEMED", _round(extraction.noise_median), "median noise of unmasked pixels"),
        ("NOISEFIX", extraction.noise_replaced, "noise values <= 0 or non-finite replaced"),
        ("NOISEWHY", extraction.noise_note, "what was done to the noise, and why"),
        ("DETNSIG", _round(detnsig), "threshold as SExtractor DETECT_THRESH (sigma)"),
        ("DETLEVEL", _round(detnsig * extraction.noise_median),
         "threshold at NOISEMED, kernel-weighted, flux/pix"),
        ("NDROPMSK", extraction.dropped_masked, "detections dropped: mostly masked pixels"),
        ("MASKPHOT", "SEP mean fill", "masked aperture area: aperture mean, maskfrac_*"),
        ("FLUXUNIT", extraction.flux_unit, "unit of fluxes"),
        ("WCSOK", extraction.wcs_ok, "ra/dec computed from the SCI WCS"),
        ("WCSMODEL", extraction.wcs_model, "ra/dec projection[-distortion]; '' = no WCS"),
    ]
    if extraction.zeropoint is not None:
        measured += [
            ("MAGZP", round(extraction.zeropoint, 6), "AB mag of 1 flux unit per second"),
            ("MAGZPSRC", extraction.zeropoint_source, "keywords MAGZP derives from"),
        ]

    settings: list[Card] = [("NAPER", len(params.aper_radii),
                             "circular apertures (flux_aper elements)")]
    settings += [(f"APRAD{i}", r, f"[pix] radius of aperture {i}")
                 for i, r in enumerate(params.aper_radii, start=1)]
    settings += [(param_keyword(f.name), _param_value(getattr(params, f.name)), f.name)
                 for f in dataclasses.fields(params)]

    # Run-specific cards last, fixed format, so their values are all that differs.
    run: list[Card] = [
        ("DATE", date, "UTC date of processing"),
        (HDR_PROCTIME, float(f"{processing_time:.4f}"), "[s] processing time"),
        (HDR_PEAK_RSS, float(f"{peak_rss_mb:.1f}"), "[MB] peak resident memory of the process"),
        (HDR_ATTEMPT, attempt, "dispatch attempt"),
    ]
    extension = "".join((_images(head), _block(described), _images(provenance),
                         _block(versions), _images(measured), _block(settings), _images(run)))

    primary: list[Card] = [
        ("SIMPLE", True, "conforms to FITS standard"),
        ("BITPIX", 8, "array data type"),
        ("NAXIS", 0, "number of array dimensions"),
        ("EXTEND", True, ""),
        ("ORIGIN", "mastmirror", "catalog made by mastmirror lambda_sep"),
        ("OBS_ID", obs_id, "dataset (ROOTNAME)"),
    ]
    body = rows.tobytes()
    return b"".join((
        _ended(_images(primary)).encode("ascii"),
        _ended(extension).encode("ascii"),
        body,
        b"\0" * (-len(body) % _BLOCK),
    ))


def _ended(images: str) -> str:
    """A header's card images with its END card, blank-padded to whole 2880-byte blocks."""
    images += "END".ljust(fits.Card.length)
    return images + " " * (-len(images) % _BLOCK)
