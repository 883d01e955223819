"""A catalog file as detection-index rows: the columns and header values the index keeps.

The catalog is the FITS file ``lambda_sep.catalog.build_catalog`` writes (docs/CATALOG.md):
an empty primary HDU naming the dataset (OBS_ID) and one BINTABLE whose header carries
FILTER, EXPSTART and EXPTIME copied from the exposure. It is parsed here directly, cards and
a numpy view of the records, because astropy's ``fits.open`` costs about 5 ms a catalog,
which alone would hold the index to 200 catalogs a second on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BLOCK = 2880
CARD = 80
MAX_HEADER_BLOCKS = 200  # a catalog header is 5-8 blocks; more means it is not one
#: Catalog columns the index keeps, with the dtype it keeps them in.
COLUMNS = {"number": np.int32, "x": np.float64, "y": np.float64, "ra": np.float64,
           "dec": np.float64, "mag_auto": np.float32, "magerr_auto": np.float32,
           "flux_auto": np.float32, "flags": np.int16}
_TFORM = {"L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "E": ">f4", "D": ">f8",
          "A": "S"}


class CatalogError(ValueError):
    """The bytes are not a usable catalog; the message says why."""


@dataclass
class CatalogRows:
    """One catalog's detections with a sky position, and what the index records about it."""

    obs_id: str
    generation: int
    catalog_key: str
    filter: str
    expstart: float  # MJD (UTC) of the exposure start; NaN if the header had none
    exptime: float  # seconds; NaN if the header had none
    columns: dict[str, np.ndarray]  # COLUMNS, native byte order, rows with a sky position
    sources: int  # rows in the catalog (NAXIS2)

    @property
    def rows(self) -> int:
        """Detections kept (those with a finite position)."""
        return len(self.columns["ra"])

    @property
    def skipped(self) -> int:
        """Detections without a usable sky position (no WCS), which the index cannot place."""
        return self.sources - self.rows


def _value(text: str) -> object:
    """A FITS card's value field: a string, logical, integer or float (None if blank)."""
    text = text.strip()
    if text.startswith("'"):
        out, i = [], 1
        while i < len(text):
            if text[i] == "'":
                if text[i + 1:i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                break
            out.append(text[i])
            i += 1
        return "".join(out).rstrip()
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return float(text.replace("D", "E"))


def _header(raw: bytes, start: int) -> tuple[dict[str, object], int]:
    """The fixed-format cards of the header at ``start`` and where its data begins."""
    cards: dict[str, object] = {}
    for block in range(MAX_HEADER_BLOCKS):
        chunk = raw[start + block * BLOCK:start + (block + 1) * BLOCK]
        if len(chunk) < BLOCK:
            raise CatalogError("truncated: a header has no END card")
        text = chunk.decode("ascii", errors="replace")
        for i in range(0, BLOCK, CARD):
            card = text[i:i + CARD]
            key = card[:8].rstrip()
            if key == "END":
                return cards, start + (block + 1) * BLOCK
            if card[8:10] == "= " and key:
                try:
                    cards[key] = _value(card[10:])
                except ValueError as exc:
                    raise CatalogError(f"card {key} has an unreadable value") from exc
    raise CatalogError(f"a header runs past {MAX_HEADER_BLOCKS} blocks")


def _dtype(cards: dict[str, object]) -> np.dtype:
    names, formats = [], []
    for i in range(1, int(str(cards.get("TFIELDS") or 0)) + 1):
        form = str(cards.get(f"TFORM{i}", "")).strip()
        repeat = form[:-1] or "1"
        code = _TFORM.get(form[-1:]) if repeat.isdigit() else None
        if code is None:
            raise CatalogError(f"column {i} has a format the index cannot read: {form!r}")
        names.append(str(cards.get(f"TTYPE{i}", f"col{i}")))
        formats.append(f"S{repeat}" if code == "S" else
                       code if repeat == "1" else f"({repeat},){code}")
    return np.dtype({"names": names, "formats": formats})


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else math.nan


def read_catalog(raw: bytes, *, obs_id: str, generation: int, catalog_key: str) -> CatalogRows:
    """The index rows of one catalog file; CatalogError if it is not a usable catalog of
    ``obs_id``."""
    if not raw.startswith(b"SIMPLE  ="):
        raise CatalogError("not a FITS file")
    primary, pos = _header(raw, 0)
    if primary.get("NAXIS", 0) != 0:
        raise CatalogError("the primary HDU holds data; a catalog's does not")
    named = primary.get("OBS_ID")
    if isinstance(named, str) and named.lower() != obs_id.lower():
        raise CatalogError(f"the catalog is of {named}, not {obs_id}")
    cards, pos = _header(raw, pos)
    if cards.get("XTENSION") != "BINTABLE":
        raise CatalogError("the first extension is not a binary table")
    dtype = _dtype(cards)
    width, count = cards.get("NAXIS1"), cards.get("NAXIS2")
    if not isinstance(count, int) or count < 0 or width != dtype.itemsize:
        raise CatalogError(f"NAXIS1 = {width!r} does not match the columns "
                           f"({dtype.itemsize} bytes) or NAXIS2 = {count!r} is not a count")
    if len(raw) < pos + width * count:
        raise CatalogError(f"truncated: {count} rows need {width * count} bytes after the "
                           f"header, the file has {len(raw) - pos}")
    missing = [c for c in COLUMNS if c not in (dtype.names or ())]
    if missing:
        raise CatalogError(f"no column {', '.join(missing)}")
    records = np.frombuffer(raw, dtype=dtype, count=count, offset=pos)
    ra, dec = records["ra"], records["dec"]
    placed = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    columns = {name: records[name][placed].astype(kind) for name, kind in COLUMNS.items()}
    columns["ra"] = np.mod(columns["ra"], 360.0)
    filt = cards.get("FILTER", primary.get("FILTER"))
    return CatalogRows(
        obs_id=obs_id, generation=generation, catalog_key=catalog_key,
        filter=filt.strip() if isinstance(filt, str) else "",
        expstart=_number(cards.get("EXPSTART", primary.get("EXPSTART"))),
        exptime=_number(cards.get("EXPTIME", primary.get("EXPTIME"))),
        columns=columns, sources=count)
