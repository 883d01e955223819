"""The catalog's columns: one declarative table (name, dtype, unit, description).

``lambda_sep.extract`` fills a column per entry, ``lambda_sep.catalog`` writes them in this
order with these types, units (``TUNITn``) and descriptions (the ``TTYPEn`` comments), and
docs/CATALOG.md shows the same table (tests/science/test_sep_catalog.py checks that it does).
Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COLUMNS", "FLUX", "Column"]

FLUX = "flux"  # unit placeholder: the SCI extension's flux unit (FLUXUNIT in the header)


@dataclass(frozen=True)
class Column:
    """One catalog column. ``dtype`` is a numpy type code; ``per_aperture`` columns hold one
    element per radius of ``aper_radii``; ``unit`` is an astropy unit string, '' for
    dimensionless values, or ``FLUX``."""

    name: str
    dtype: str
    unit: str
    description: str
    per_aperture: bool = False


COLUMNS: tuple[Column, ...] = (
    Column("number", "i4", "", "running source number"),
    Column("x", "f8", "pix", "x, 1-based: XWIN; barycentre if flags_win & 1"),
    Column("y", "f8", "pix", "y, 1-based: YWIN; barycentre if flags_win & 1"),
    Column("ra", "f8", "deg", "right ascension (ICRS), SCI WCS (see WCSMODEL)"),
    Column("dec", "f8", "deg", "declination (ICRS), SCI WCS (see WCSMODEL)"),
    Column("x_bary", "f8", "pix", "isophotal barycentre x, 1-based"),
    Column("y_bary", "f8", "pix", "isophotal barycentre y, 1-based"),
    Column("a", "f4", "pix", "isophotal semi-major axis rms"),
    Column("b", "f4", "pix", "isophotal semi-minor axis rms"),
    Column("theta", "f4", "deg", "major axis angle, CCW from +x"),
    Column("npix", "i4", "pix2", "isophotal area"),
    Column("kron_radius", "f4", "", "AUTO ellipse scale (a, b units), 0 = circle"),
    Column("flux_auto", "f4", FLUX, "flux in Kron (AUTO) aperture"),
    Column("fluxerr_auto", "f4", FLUX, "error of flux_auto"),
    Column("mag_auto", "f4", "mag(AB)", "AB magnitude, AUTO"),
    Column("magerr_auto", "f4", "mag", "error of mag_auto"),
    Column("flux_aper", "f4", FLUX, "flux in circular apertures", per_aperture=True),
    Column("fluxerr_aper", "f4", FLUX, "error of flux_aper", per_aperture=True),
    Column("mag_aper", "f4", "mag(AB)", "AB magnitude, apertures", per_aperture=True),
    Column("magerr_aper", "f4", "mag", "error of mag_aper", per_aperture=True),
    Column("flux_iso", "f4", FLUX, "isophotal flux"),
    Column("flux_radius", "f4", "pix", "half-light radius"),
    Column("peak", "f4", FLUX, "peak pixel above background"),
    Column("background", "f4", FLUX, "background at the peak"),
    Column("flags", "i2", "", "SEP object flags (1,2,4,8)"),
    Column("flags_auto", "i2", "", "AUTO flags: SEP 16..128; ours 256, 512, 1024"),
    Column("flags_aper", "i2", "", "SEP aperture flags per aperture", per_aperture=True),
    Column("flags_win", "i2", "", "winpos flags (16, 32); 1 = barycentre used"),
    Column("flags_dq", "i4", "", "OR of DQ bits over the isophote"),
    Column("maskfrac_auto", "f4", "", "AUTO aperture area masked, fraction"),
    Column("maskfrac_aper", "f4", "", "aperture area masked, fraction", per_aperture=True),
)
