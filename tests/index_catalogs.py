"""Catalog files with detections where a test wants them, written by the real catalog writer.

``lambda_sep.catalog.build_catalog`` serialises a synthetic extraction (sources placed on
the sky by the test, magnitudes and flags drawn from a seeded generator) with the header an
exposure would give it (FILTER, EXPSTART, EXPTIME), so the index reads exactly the bytes
the extraction function writes, without running SEP on an image for every catalog.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from lambda_sep.catalog import build_catalog
from lambda_sep.columns import COLUMNS
from lambda_sep.extract import Extraction
from lambda_sep.fitsread import Image
from lambda_sep.params import SepParams

FILTERS = ("F105W", "F110W", "F125W", "F140W", "F160W")
_PARAMS = SepParams()


@dataclass(frozen=True)
class Exposure:
    """A synthetic exposure: where it points and what its catalog holds."""

    obs_id: str
    ra: np.ndarray
    dec: np.ndarray
    filter: str
    expstart: float
    exptime: float
    seed: int

    @property
    def input_key(self) -> str:
        """Its archive key (hst/public/<first 4>/<dataset>/<dataset>_flt.fits)."""
        return f"hst/public/{self.obs_id[:4]}/{self.obs_id}/{self.obs_id}_flt.fits"

    @property
    def catalog_key(self) -> str:
        """Its catalog's key in the output store."""
        return self.input_key[: -len(".fits")] + "_sep.fits"


def field_exposure(obs_id: str, ra0: float, dec0: float, *, n: int, seed: int,
                   half_width_deg: float = 0.034) -> Exposure:
    """Sources spread over a square field (WFC3/IR's 123" x 136" by default) at (ra0, dec0),
    drawn on the tangent plane so fields at a pole or across RA 0 come out right."""
    rng = np.random.default_rng(seed)
    xi = np.radians(rng.uniform(-half_width_deg, half_width_deg, n))
    eta = np.radians(rng.uniform(-half_width_deg, half_width_deg, n))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    denom = np.cos(d0) - eta * np.sin(d0)
    ra = np.degrees(a0 + np.arctan2(xi, denom)) % 360.0
    dec = np.degrees(np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, denom)))
    return Exposure(obs_id, ra, dec, FILTERS[seed % len(FILTERS)],
                    expstart=58000.0 + (seed % 3000) * 0.37, exptime=250.0 + seed % 7 * 100.0,
                    seed=seed)


def catalog_bytes(e: Exposure) -> bytes:
    """The catalog file of ``e``, as the extraction function would write it."""
    rng = np.random.default_rng(e.seed + 1)
    n = len(e.ra)
    flux = rng.lognormal(1.0, 1.5, n).astype(np.float32)
    err = (0.02 * flux + 0.05).astype(np.float32)
    f32 = np.float32
    columns = {
        "number": np.arange(1, n + 1, dtype=np.int32),
        "x": rng.uniform(1, 1014, n),
        "y": rng.uniform(1, 1014, n),
        "ra": np.asarray(e.ra, np.float64),
        "dec": np.asarray(e.dec, np.float64),
        "a": rng.uniform(1, 4, n).astype(f32),
        "b": rng.uniform(0.5, 1, n).astype(f32),
        "flux_auto": flux,
        "fluxerr_auto": err,
        "mag_auto": (25.9 - 2.5 * np.log10(flux)).astype(f32),
        "magerr_auto": (2.5 / np.log(10) * err / flux).astype(f32),
        "flux_aper": rng.uniform(0, 10, (n, 4)).astype(f32),
        "flags": rng.choice(np.array([0, 0, 0, 1, 2, 3], np.int16), n),
        "flags_dq": np.zeros(n, np.int32),
    }
    # The index reads the columns above; the catalog holds every column, the rest zero.
    naper = len(_PARAMS.aper_radii)
    for c in COLUMNS:
        if c.name not in columns:
            columns[c.name] = np.zeros((n, naper) if c.per_aperture else n, c.dtype)
    extraction = Extraction(
        columns=columns, background=0.8, background_rms=0.03, zeropoint=25.9,
        zeropoint_source="PHOTFLAM,PHOTPLAM", flux_unit="electron / s", masked_pixels=0,
        noise_source="ERR", noise_note="", noise_replaced=0, noise_median=0.03,
        dropped_masked=0, wcs_ok=True, wcs_model="TAN-SIP")
    primary = fits.Header({"FILTER": e.filter, "EXPSTART": e.expstart, "EXPTIME": e.exptime,
                           "INSTRUME": "WFC3", "DETECTOR": "IR"})
    image = Image(sci=np.zeros((1, 1), np.float32), err=None, dq=None, wht=None,
                  primary=primary, sci_header=fits.Header(), size=16_496_640,
                  bytes_read=10_313_352, ranges=[(0, 1)], extensions=["PRIMARY", "SCI"])
    return build_catalog(extraction, image, _PARAMS, obs_id=e.obs_id, bucket="stpubdata",
                         key=e.input_key, etag=f"{zlib.crc32(e.obs_id.encode()):08x}",
                         attempt=1, processing_time=0.2, peak_rss_mb=200.0,
                         date="2026-01-01T00:00:00+00:00")


def obs_id(i: int) -> str:
    """A valid WFC3/IR dataset name for index ``i`` (9 characters, program by hundreds)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    prog = f"i{letters[i // 67600 % 26]}{letters[i // 2600 % 26]}{letters[i // 100 % 26]}"
    return f"{prog}{i % 100:02d}{letters[i % 26]}{letters[i // 26 % 26]}q"
