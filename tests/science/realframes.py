"""The real frames kept in tests/data (see its README), as the FITS files the handler reads.

* ``ibxy07p9q``, ``ibxy01z8q``: the final read of two WFC3/IR GRISM256 subarray IMAs of
  GJ 1214 (F130N), trimmed of the 5-pixel reference border as calwf3 trims an FLT: 256x256,
  real SCI, ERR and DQ. ``untrimmed(root)`` keeps the border (ERR = 0 there).
* ``ib6o23rtq`` (F140W), ``ib6o21qnq`` (F098M), ``ib6o21qmq`` (G102), ``ib6o23rsq`` (G141):
  full-frame FLTs with real headers and DQ, SCI and ERR quantised to 0..255 by grizli.
* ``sep_image``: SEP's ground-based test frame (no ERR, no DQ), as a SCI extension.
"""

from __future__ import annotations

import gzip
import io
import warnings
from functools import cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

DATA = Path(__file__).resolve().parents[1] / "data"
REF = 5  # WFC3/IR reference pixels on each side
SUBARRAYS = ("ibxy07p9q", "ibxy01z8q")
GRIZLI_IMAGING = ("ib6o23rtq", "ib6o21qnq")
GRIZLI_GRISM = ("ib6o21qmq", "ib6o23rsq")
# The frames of the science figures (docs/CATALOG.md), in table order.
SCIENCE = (*SUBARRAYS, *GRIZLI_IMAGING, "sep_image")


def _gunzip(name: str) -> bytes:
    return gzip.decompress((DATA / name).read_bytes())


def _write(hdus: list[fits.PrimaryHDU | fits.ImageHDU]) -> bytes:
    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


@cache
def untrimmed(root: str) -> bytes:
    """The IMA's final read as stored: PRIMARY, SCI, ERR, DQ, 266x266."""
    return _gunzip(f"{root}_ima_final.fits.gz")


@cache
def subarray_flt(root: str) -> bytes:
    """The final read without its reference border: a 256x256 FLT-like file. The WCS
    reference pixel and the LTV offsets move with the cut, as calwf3 moves them."""
    with fits.open(io.BytesIO(untrimmed(root))) as hdul:
        hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [
            fits.PrimaryHDU(header=hdul[0].header.copy())]
        for hdu in hdul[1:]:
            h = hdu.header.copy()
            for k in ("CRPIX1", "CRPIX2", "LTV1", "LTV2"):
                if k in h:
                    h[k] = h[k] - REF
            h["SIZAXIS1"] = h["SIZAXIS2"] = hdu.data.shape[0] - 2 * REF
            hdus.append(fits.ImageHDU(np.ascontiguousarray(hdu.data[REF:-REF, REF:-REF]),
                                      header=h))
        hdus[0].header["FILETYPE"] = "SCI"
    return _write(hdus)


@cache
def grizli_flt(root: str) -> bytes:
    """A grizli test FLT as it is (PRIMARY, SCI, ERR, DQ, SAMP, TIME)."""
    return _gunzip(f"{root}_flt.fits.gz")


@cache
def sep_image() -> bytes:
    """SEP's test frame with its header moved to a SCI extension (the reader needs one)."""
    with warnings.catch_warnings():
        # Its ESO-LOG cards are not FITS keywords; astropy keeps them as comments.
        warnings.simplefilter("ignore", AstropyUserWarning)
        with fits.open(io.BytesIO(_gunzip("sep_image.fits.gz"))) as hdul:
            header = hdul[0].header.copy()
            data = hdul[0].data.astype(np.float32)
        return _write([fits.PrimaryHDU(), fits.ImageHDU(data, header=header, name="SCI")])


def frame(name: str) -> bytes:
    """The FITS bytes of a frame named in this module's docstring."""
    if name in SUBARRAYS:
        return subarray_flt(name)
    if name == "sep_image":
        return sep_image()
    return grizli_flt(name)
