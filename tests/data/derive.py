"""Rebuild tests/data from the files of the public repositories named in README.md.

    python tests/data/derive.py PACMAN_DIR GRIZLI_RAW_DIR SEP_DATA_DIR

PACMAN_DIR holds ibxy07p9q_ima.fits and ibxy01z8q_ima.fits (sebastian-zieba/PACMAN),
GRIZLI_RAW_DIR the FLTs of grizli's wfc3-parse-test.tar.gz (its RAW/ folder), SEP_DATA_DIR
kbarbary/sep's data/ folder. The output is byte-for-byte reproducible (gzip without a name or
a time stamp).
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

from astropy.io import fits

OUT = Path(__file__).resolve().parent
PACMAN = ("ibxy07p9q", "ibxy01z8q")  # GJ 1214, F130N, GRISM256 subarray IMAs
GRIZLI = ("ib6o23rtq", "ib6o21qnq", "ib6o21qmq", "ib6o23rsq")  # F140W, F098M, G102, G141


def _gzip(data: bytes, name: str) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    (OUT / name).write_bytes(buf.getvalue())


def final_read(ima: Path) -> bytes:
    """The IMA's primary header and its final read (SCI, ERR, DQ of EXTVER 1), untrimmed:
    266x266 with the 5-pixel reference border calwf3 trims off in the FLT."""
    with fits.open(ima) as hdul:
        hdus = [fits.PrimaryHDU(header=hdul[0].header)]
        hdus += [fits.ImageHDU(hdul[name, 1].data, header=hdul[name, 1].header)
                 for name in ("SCI", "ERR", "DQ")]
        buf = io.BytesIO()
        fits.HDUList(hdus).writeto(buf, output_verify="silentfix")
    return buf.getvalue()


def main(argv: list[str]) -> int:
    """Write the files; see the module docstring for the arguments."""
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    pacman, grizli, sep_data = (Path(a) for a in argv)
    for root in PACMAN:
        _gzip(final_read(pacman / f"{root}_ima.fits"), f"{root}_ima_final.fits.gz")
    for root in GRIZLI:
        _gzip((grizli / f"{root}_flt.fits").read_bytes(), f"{root}_flt.fits.gz")
    _gzip((sep_data / "image.fits").read_bytes(), "sep_image.fits.gz")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
