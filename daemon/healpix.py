"""HEALPix in the NESTED scheme, the little the detection index needs, in numpy.

HATS partitions a catalog by nested HEALPix pixels and keeps each row's order-29 pixel
(``_healpix_29``) as its spatial index; a pixel of order k is that number shifted right by
2 (29 - k) bits. The algorithm is HEALPix's own ``loc2pix`` (Gorski et al. 2005, ApJ 622,
759; healpix_base.cc), with the polar branch written in terms of cos(dec) so it keeps its
precision at the poles. It is here rather than imported from cdshealpix because
cdshealpix imports astropy.units, which would cost ``mastmirror search`` a third of its
start-up; the tests check it against cdshealpix (through hats) row for row.
"""

from __future__ import annotations

import numpy as np

ORDER = 29  # the order of the spatial index column (HATS's _healpix_29)
NSIDE = 1 << ORDER
_TWOTHIRD = 2.0 / 3.0


def _spread(v: np.ndarray) -> np.ndarray:
    """Spread the low 32 bits of ``v`` to the even bit positions (Morton interleave)."""
    v = v.astype(np.uint64)
    for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF),
                        (4, 0x0F0F0F0F0F0F0F0F), (2, 0x3333333333333333),
                        (1, 0x5555555555555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def hp29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """The order-29 nested pixel (int64) of each (ra, dec) in degrees (ICRS).

    ``dec`` must lie in [-90, 90] and both must be finite (callers filter first).
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    z = np.sin(np.radians(dec))
    za = np.abs(z)
    tt = np.mod(ra, 360.0) / 90.0
    tt = np.where(tt >= 4.0, 0.0, tt)  # mod of a tiny negative rounds up to 360
    nside = float(NSIDE)
    nmask = NSIDE - 1
    face = np.empty(ra.shape, dtype=np.int64)
    ix = np.empty(ra.shape, dtype=np.int64)
    iy = np.empty(ra.shape, dtype=np.int64)

    eq = za <= _TWOTHIRD
    t1 = nside * (0.5 + tt[eq])
    t2 = nside * (z[eq] * 0.75)
    jp = (t1 - t2).astype(np.int64)  # index of the ascending edge line
    jm = (t1 + t2).astype(np.int64)  # index of the descending edge line
    ifp, ifm = jp >> ORDER, jm >> ORDER
    face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
    ix[eq] = jm & nmask
    iy[eq] = NSIDE - (jp & nmask) - 1

    po = ~eq
    ntt = np.minimum(3, tt[po].astype(np.int64))
    tp = tt[po] - ntt
    # nside * sqrt(3 (1 - |z|)), as nside * cos(dec) / sqrt((1 + |z|) / 3): no cancellation
    tmp = nside * np.cos(np.radians(dec[po])) / np.sqrt((1.0 + za[po]) / 3.0)
    jp = np.minimum((tp * tmp).astype(np.int64), nmask)
    jm = np.minimum(((1.0 - tp) * tmp).astype(np.int64), nmask)
    north = z[po] >= 0
    face[po] = np.where(north, ntt, ntt + 8)
    ix[po] = np.where(north, NSIDE - jm - 1, jp)
    iy[po] = np.where(north, NSIDE - jp - 1, jm)

    return ((face.astype(np.uint64) << np.uint64(2 * ORDER))
            | _spread(ix) | (_spread(iy) << np.uint64(1))).astype(np.int64)


def shift(order: int) -> int:
    """Bits between an order-``order`` pixel number and the order-29 index."""
    if not 0 <= order <= ORDER:
        raise ValueError(f"HEALPix order must be 0..{ORDER}, not {order}")
    return 2 * (ORDER - order)


def pixel_range(order: int, npix: int) -> tuple[int, int]:
    """The order-29 indices [lo, hi) inside pixel ``npix`` of order ``order``."""
    s = shift(order)
    return npix << s, (npix + 1) << s
