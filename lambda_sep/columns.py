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


# name | numpy type ("[]": one element per aperture) | unit | description (the TTYPEn
# comment: at most 47 characters, what fits on the card)
_TABLE = """
number        | i4   |         | running source number
x             | f8   | pix     | x, 1-based: XWIN; barycentre if flags_win & 1
y             | f8   | pix     | y, 1-based: YWIN; barycentre if flags_win & 1
ra            | f8   | deg     | right ascension (ICRS), SCI WCS (see WCSMODEL)
dec           | f8   | deg     | declination (ICRS), SCI WCS (see WCSMODEL)
x_bary        | f8   | pix     | isophotal barycentre x, 1-based
y_bary        | f8   | pix     | isophotal barycentre y, 1-based
a             | f4   | pix     | isophotal semi-major axis rms
b             | f4   | pix     | isophotal semi-minor axis rms
theta         | f4   | deg     | major axis angle, CCW from +x
npix          | i4   | pix2    | isophotal area
kron_radius   | f4   |         | AUTO ellipse scale (a, b units), 0 = circle
flux_auto     | f4   | flux    | flux in Kron (AUTO) aperture
fluxerr_auto  | f4   | flux    | error of flux_auto
mag_auto      | f4   | mag(AB) | AB magnitude, AUTO
magerr_auto   | f4   | mag     | error of mag_auto
flux_aper     | f4[] | flux    | flux in circular apertures
fluxerr_aper  | f4[] | flux    | error of flux_aper
mag_aper      | f4[] | mag(AB) | AB magnitude, apertures
magerr_aper   | f4[] | mag     | error of mag_aper
flux_iso      | f4   | flux    | isophotal flux
flux_radius   | f4   | pix     | half-light radius, masked pixels left out
peak          | f4   | flux    | peak pixel above background
background    | f4   | flux    | background at the peak
flags         | i2   |         | SEP object flags (1,2,4,8)
flags_auto    | i2   |         | AUTO flags: SEP 16..128; ours 256, 512, 1024
flags_aper    | i2[] |         | SEP aperture flags per aperture
flags_win     | i2   |         | winpos flags (16, 32); 1 = barycentre used
flags_dq      | i4   |         | OR of DQ bits over the isophote
maskfrac_auto | f4   |         | AUTO aperture area masked, fraction
maskfrac_aper | f4[] |         | aperture area masked, fraction
"""


def _parse(table: str) -> tuple[Column, ...]:
    columns = []
    for line in table.strip().splitlines():
        name, kind, unit, description = (f.strip() for f in line.split("|"))
        columns.append(Column(name, kind.removesuffix("[]"), unit, description,
                              per_aperture=kind.endswith("[]")))
    return tuple(columns)


COLUMNS: tuple[Column, ...] = _parse(_TABLE)
