"""Cone searches of the detection index, and the formats ``mastmirror search`` writes.

A search reads the manifest (the current commit), keeps the fragments whose sky box meets
the cone, then the row groups whose ra/dec statistics meet it, and keeps the rows within
the radius (haversine distance). Positions may be degrees or sexagesimal strings, read as
astropy's SkyCoord reads them. Only pyarrow and numpy are imported up front (astropy only
to read a sexagesimal position or write a VOTable): ``mastmirror search`` is a process that
should answer within a second.

An ``IndexReader`` keeps Parquet footers of the fragments it has opened, so repeated
searches in one process (the library call, warm) decode only the row groups they need.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from daemon.index import SCHEMA, STRING_COLUMNS, IndexFault, Manifest, read_manifest
from daemon.indexstore import IndexStore

_RETRIES = 3  # a fragment deleted by a commit between reading the manifest and the file
_COLUMNS = [f.name for f in SCHEMA if f.name != "_healpix_29"]
_OUT = pa.schema([SCHEMA.field(c) for c in _COLUMNS])


class SearchError(ValueError):
    """A search that cannot be made (bad position or radius); says why."""


class NoIndex(SearchError):
    """There is no index at the URL (yet)."""


def parse_position(ra: float | str, dec: float | str) -> tuple[float, float]:
    """(ra, dec) in degrees from numbers, decimal-degree strings, or sexagesimal strings
    as SkyCoord reads them ("10h21m03.2s" "+41d12m", or "10:21:03.2" "+41:12:00" with RA
    in hours)."""
    try:
        ra_deg, dec_deg = float(ra), float(dec)
    except ValueError:
        fast_ra, fast_dec = _plain_sexagesimal(str(ra), "h"), _plain_sexagesimal(str(dec), "d")
        if fast_ra is not None and fast_dec is not None:
            ra_deg, dec_deg = fast_ra, fast_dec
        else:
            ra_deg, dec_deg = _sexagesimal(str(ra), str(dec))
    if not (math.isfinite(ra_deg) and math.isfinite(dec_deg)):
        raise SearchError(f"position ({ra}, {dec}) is not finite")
    if abs(dec_deg) > 90.0:
        raise SearchError(f"declination {dec} is outside -90..90 degrees")
    return ra_deg % 360.0, dec_deg


# The three spellings people type, read here as SkyCoord reads them (tests compare the
# two) because importing astropy.coordinates costs a search process half a second:
# 10:21:03.2 and 10 21 03.2 (RA in hours, Dec in degrees), 10h21m03.2s and -41d12m00s.
_SEXAGESIMAL = [re.compile(r"([+-]?)(\d{1,3})(:)(\d{1,2}):(\d{1,2}(?:\.\d*)?)"),
                re.compile(r"([+-]?)(\d{1,3})( )\s*(\d{1,2})\s+(\d{1,2}(?:\.\d*)?)"),
                re.compile(r"([+-]?)(\d{1,3})([hd])(\d{1,2})m(\d{1,2}(?:\.\d*)?)s")]


def _plain_sexagesimal(text: str, default: str) -> float | None:
    """Degrees of one of the spellings above (``default``: "h" or "d" when it has no
    unit letter), or None for anything else (SkyCoord then reads it)."""
    for pattern in _SEXAGESIMAL:
        m = pattern.fullmatch(text.strip())
        if m is None:
            continue
        sign, whole, sep, minutes, seconds = m.groups()
        if int(minutes) >= 60 or float(seconds) >= 60:
            return None  # SkyCoord's verdict (a warning or an error) then applies
        value = int(whole) + int(minutes) / 60 + float(seconds) / 3600
        if (sep if sep in "hd" else default) == "h":
            value *= 15.0
        return -value if sign == "-" else value
    return None


def _sexagesimal(ra: str, dec: str) -> tuple[float, float]:
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    try:
        try:
            coord = SkyCoord(ra, dec)
        except u.UnitsError:  # no unit letters: RA in hours, Dec in degrees
            coord = SkyCoord(ra, dec, unit=(u.hourangle, u.deg))
        return float(coord.ra.deg), float(coord.dec.deg)
    except (ValueError, u.UnitsError) as exc:
        raise SearchError(f"cannot read the position ({ra}, {dec}): {exc}") from None


def cone_box(ra: float, dec: float, radius: float
             ) -> tuple[float, float, tuple[float, float] | None]:
    """Dec limits and the RA interval (None: every RA) of a cone, all in degrees."""
    lo, hi = dec - radius, dec + radius
    if lo <= -90.0 or hi >= 90.0:
        return lo, hi, None  # the cone holds a pole
    half = math.degrees(math.asin(min(1.0, math.sin(math.radians(radius))
                                      / math.cos(math.radians(dec)))))
    return lo, hi, (None if half >= 180.0 else (ra - half, ra + half))


def meets(box: tuple[float, float, tuple[float, float] | None], boxes: np.ndarray
          ) -> np.ndarray:
    """Which sky boxes (rows of ra min, ra max, dec min, dec max) a cone's box meets."""
    lo, hi, ras = box
    hit = (boxes[:, 3] >= lo) & (boxes[:, 2] <= hi)
    if ras is not None:
        hit &= np.logical_or.reduce([(ras[0] + k <= boxes[:, 1]) & (ras[1] + k >= boxes[:, 0])
                                     for k in (-360.0, 0.0, 360.0)])
    return hit


def separation(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    """Angular distance in degrees (haversine: exact at small and large angles alike)."""
    d0, d = math.radians(dec0), np.radians(dec)
    hav = (np.sin((d - d0) / 2) ** 2
           + math.cos(d0) * np.cos(d) * np.sin(np.radians(ra - ra0) / 2) ** 2)
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0))))


class _Fragment:
    """An opened fragment: its footer, and each row group's size and ra/dec box."""

    def __init__(self, store: IndexStore, name: str) -> None:
        # Strings stay dictionary-encoded while rows are chosen: decoding a row group's
        # catalog keys costs more than everything else in a small search.
        self.file = pq.ParquetFile(store.open(name), read_dictionary=STRING_COLUMNS)
        md = self.file.metadata
        names = md.schema.names
        ira, idec = names.index("ra"), names.index("dec")
        boxes, sizes = [], []
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            sizes.append(rg.num_rows)
            sr, sd = rg.column(ira).statistics, rg.column(idec).statistics
            if sr is None or sd is None or not (sr.has_min_max and sd.has_min_max):
                boxes.append((0.0, 360.0, -90.0, 90.0))
            else:
                boxes.append((sr.min, sr.max, sd.min, sd.max))
        self.boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        self.sizes = np.array(sizes, dtype=np.int64)

    def cone(self, box: tuple[float, float, tuple[float, float] | None],
             cone: tuple[float, float, float]) -> tuple[pa.Table, np.ndarray] | None:
        """The rows within the cone (all columns) and their separations, or None."""
        groups = np.flatnonzero(meets(box, self.boxes)).tolist()
        if not groups:
            return None
        # Positions first; the other columns only of row groups that hold a hit.
        pos = self.file.read_row_groups(groups, columns=["ra", "dec"])
        dec = pos["dec"].to_numpy()
        near = np.flatnonzero(np.abs(dec - cone[1]) <= cone[2])  # a cheap first cut
        sep = np.full(len(dec), np.inf)
        sep[near] = separation(pos["ra"].to_numpy()[near], dec[near], cone[0], cone[1])
        hit = sep <= cone[2]
        if not hit.any():
            return None
        ends = np.cumsum(self.sizes[groups])
        starts = ends - self.sizes[groups]
        keep = [i for i, (a, b) in enumerate(zip(starts, ends, strict=True)) if hit[a:b].any()]
        rows = np.concatenate([np.arange(starts[i], ends[i]) for i in keep])
        table = self.file.read_row_groups([groups[i] for i in keep], columns=_COLUMNS)
        chosen = np.flatnonzero(hit[rows])
        return table.take(chosen), sep[rows][chosen]


class IndexReader:
    """Cone searches of one index (a directory, file:// or s3:// URL)."""

    def __init__(self, url: str) -> None:
        """Open ``url``; nothing is read until the first search."""
        self.store = IndexStore(url)
        self._open: dict[str, _Fragment] = {}

    def manifest(self) -> Manifest:
        """The current commit; SearchError if there is no index at the URL."""
        m = read_manifest(self.store)
        if m is None:
            raise NoIndex(f"no detection index at {self.store.url} (it is made as "
                              "catalogs reconcile with [index] url set, or by "
                              "`mastmirror index rebuild`)")
        return m

    def cone(self, ra: float, dec: float, radius_arcsec: float, *, filter: str | None = None,
             mag_max: float | None = None) -> pa.Table:
        """Every detection within ``radius_arcsec`` of (ra, dec) degrees, nearest first,
        with its ``separation`` (arcsec); ``filter`` and ``mag_max`` narrow it."""
        if not (math.isfinite(radius_arcsec) and 0 < radius_arcsec <= 180 * 3600):
            raise SearchError(f"radius {radius_arcsec} arcsec must be > 0 and <= 180 degrees")
        for attempt in range(_RETRIES):
            manifest = self.manifest()
            try:
                table, sep = self._cone(manifest, (ra, dec, radius_arcsec / 3600.0))
                break
            except FileNotFoundError:
                if attempt == _RETRIES - 1:
                    raise IndexFault(f"{self.store.url}: a fragment the manifest names is "
                                     "missing; run `mastmirror index check`") from None
        keep = np.ones(len(sep), dtype=bool)
        if filter is not None:
            keep &= pc.equal(table["filter"], filter.upper()).to_numpy(zero_copy_only=False)
        if mag_max is not None:
            keep &= pc.fill_null(pc.less_equal(table["mag_auto"], mag_max), False).to_numpy(
                zero_copy_only=False)
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(sep[idx], kind="stable")]
        out = table.take(idx).cast(_OUT)
        return out.append_column(pa.field("separation", pa.float64(), metadata={
            "unit": "arcsec", "description": "distance from the search position"}),
            pa.chunked_array([sep[idx] * 3600.0], pa.float64()))

    def _cone(self, manifest: Manifest, cone: tuple[float, float, float]
              ) -> tuple[pa.Table, np.ndarray]:
        box = cone_box(*cone)
        live = {f.name for f in manifest.fragments()}
        for name in [n for n in self._open if n not in live]:
            del self._open[name]  # compacted or replaced away
        frags = list(manifest.fragments())
        boxes = np.array([f.bbox for f in frags], dtype=np.float64).reshape(-1, 4)
        tables, seps = [], []
        for i in np.flatnonzero(meets(box, boxes)):
            name = frags[i].name
            opened = self._open.get(name)
            if opened is None:
                opened = self._open[name] = _Fragment(self.store, name)
            found = opened.cone(box, cone)
            if found is not None:
                tables.append(found[0])
                seps.append(found[1])
        if not tables:
            return _OUT.empty_table(), np.empty(0)
        return pa.concat_tables(tables), np.concatenate(seps)


_READERS: dict[str, IndexReader] = {}


def search(index: str | IndexReader, ra: float | str, dec: float | str,
           radius_arcsec: float, *, filter: str | None = None,
           mag_max: float | None = None) -> pa.Table:
    """Cone search of the index at ``index`` (a URL, or an open IndexReader): detections
    within ``radius_arcsec`` of (ra, dec), degrees or sexagesimal, nearest first.

    Readers are kept per URL, so repeated searches of one index in a process are warm.
    """
    if isinstance(index, str):
        index = _READERS.setdefault(index, IndexReader(index))
    ra_deg, dec_deg = parse_position(ra, dec)
    return index.cone(ra_deg, dec_deg, float(radius_arcsec), filter=filter, mag_max=mag_max)


# -- output formats ---------------------------------------------------------------------

_TEXT = {"obs_id": "{}", "generation": "{}", "filter": "{}", "expstart": "{:.5f}",
         "exptime": "{:.1f}", "ra": "{:.7f}", "dec": "{:.7f}", "separation": "{:.3f}",
         "mag_auto": "{:.3f}", "magerr_auto": "{:.3f}", "flux_auto": "{:.4g}", "flags": "{}",
         "x": "{:.2f}", "y": "{:.2f}", "number": "{}"}


def _text(table: pa.Table, out: IO[bytes]) -> None:
    cols = {name: [fmt.format(v) if v is not None else "" for v in table[name].to_pylist()]
            for name, fmt in _TEXT.items()}
    widths = {n: max([len(n), *map(len, v)]) for n, v in cols.items()}
    lines = ["  ".join(n.rjust(widths[n]) for n in cols)]
    lines += ["  ".join(cols[n][i].rjust(widths[n]) for n in cols)
              for i in range(table.num_rows)]
    lines.append(f"{table.num_rows} detection(s)")
    out.write(("\n".join(lines) + "\n").encode())


def _csv(table: pa.Table, out: IO[bytes]) -> None:
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, out)


def _votable(table: pa.Table, out: IO[bytes]) -> None:
    from astropy.io.votable import from_table
    from astropy.table import Table

    t = Table()
    for f in table.schema:
        column = table[f.name].to_numpy(zero_copy_only=False)
        meta = {k.decode(): v.decode() for k, v in (f.metadata or {}).items()}
        t[f.name] = column.astype(str) if pa.types.is_string(f.type) else column
        t[f.name].unit = meta.get("unit") or None
        t[f.name].description = meta.get("description")
    from_table(t).to_xml(out)


def _parquet(table: pa.Table, out: IO[bytes]) -> None:
    pq.write_table(table, out)


WRITERS: dict[str, Callable[[pa.Table, IO[bytes]], None]] = {
    "table": _text, "csv": _csv, "votable": _votable, "parquet": _parquet}
FORMATS = tuple(WRITERS)


def write(table: pa.Table, fmt: str, out: IO[bytes] | None = None) -> None:
    """Write search results as ``fmt`` (one of FORMATS) to ``out`` (default stdout)."""
    if fmt not in WRITERS:
        raise SearchError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    target: Any = out if out is not None else sys.stdout.buffer
    WRITERS[fmt](table, target)
    target.flush()
