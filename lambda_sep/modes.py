"""What the function catalogues: imaging exposures, as FLT/FLC/DRZ/DRC products.

Anything else is *skipped* (a terminal outcome, no failure): first by the product type in the
key, before anything is read, then by the exposure's headers, before its pixels are read
(``fitsread.read_image(..., inspect=header_refusal)``).
The header rules follow the HST keywords: ``OBSTYPE`` ("IMAGING" or "SPECTROSCOPIC"),
``FILTER`` (WFC3; ACS and WFPC2 name two wheels, ``FILTER1``/``FILTER2``) and ``EXPTIME``.
Dispersers are named G<wavelength>[L|M|H] (WFC3 G102, G141, G280; ACS G800L) and PR<...>
(ACS PR110L, PR130L, PR200L; STIS and NICMOS use the same scheme); ``BLANK`` is the
closed filter wheel of a dark.
"""

from __future__ import annotations

import math
import re

from astropy.io import fits

__all__ = ["CATALOGUED_PRODUCTS", "header_refusal", "product_refusal"]

CATALOGUED_PRODUCTS = ("flt", "flc", "drz", "drc")
_DISPERSER = re.compile(r"^(G\d{3,4}[LMH]?|PR\d{3}[LMH]?)$")
_FILTER_KEYS = ("FILTER", "FILTER1", "FILTER2")


def product_refusal(key: str) -> str | None:
    """Why the product type in ``key`` (``..._<type>.fits``) is not catalogued, or None."""
    stem = key.rsplit("/", 1)[-1].removesuffix(".fits")
    product = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    if product in CATALOGUED_PRODUCTS:
        return None
    return (f"product type {product or '(none)'!r} is not catalogued (only "
            f"{', '.join(CATALOGUED_PRODUCTS)})")


def header_refusal(primary: fits.Header, sci: fits.Header) -> str | None:
    """Why the headers say this is not an imaging exposure (OBSTYPE other than IMAGING, a
    grism, prism or closed filter, EXPTIME missing or <= 0), or None. A keyword is looked
    up in the SCI header first, then the primary (as ``fitsread.Image.keyword`` does)."""

    def kw(name: str) -> object:
        return sci[name] if name in sci else primary.get(name)

    obstype = kw("OBSTYPE")
    if isinstance(obstype, str) and obstype.strip() and obstype.strip().upper() != "IMAGING":
        return f"OBSTYPE = {obstype.strip()!r}: not an imaging exposure"
    for name in _FILTER_KEYS:
        value = kw(name)
        if not isinstance(value, str):
            continue
        filt = value.strip().upper()
        if _DISPERSER.match(filt):
            return (f"{name} = {filt!r} is a grism or prism: a dispersed exposure, not an "
                    "image of sources")
        if filt == "BLANK":
            return f"{name} = 'BLANK': the filter wheel is closed (a dark)"
    exptime = kw("EXPTIME")
    if isinstance(exptime, bool) or not isinstance(exptime, int | float) \
            or not math.isfinite(exptime):
        return f"EXPTIME = {exptime!r}: no usable exposure time"
    if exptime <= 0:
        return f"EXPTIME = {exptime:g}: no exposure, nothing to catalogue"
    return None
