"""The detection index: a HATS catalog of every detection, appended to as catalogs reconcile.

Layout (HATS 1.0, the format ``hats`` and ``lsdb`` read; each partition is a directory of
Parquet files, ``hats_npix_suffix=/``)::

    <index>/hats.properties, properties      catalog properties (HATS's name and the old one)
    <index>/partition_info.csv               Norder,Npix of every partition
    <index>/dataset/_common_metadata         the Parquet schema
    <index>/dataset/Norder=K/Dir=D/Npix=N/<commit>-<random>.parquet    rows, sorted by
                                             _healpix_29 (the fragments of a partition)
    <index>/_mastmirror/manifest.json        the commit pointer: every live fragment
    <index>/_mastmirror/catalogs/<commit>.parquet   the catalogs held: obs_id, generation,
                                             catalog key, rows, the partitions they went to

**Commit.** A write puts every new fragment and a new catalogs file under fresh names, then
replaces ``manifest.json`` in one atomic write: that is the commit. Only then are the HATS
files rewritten and superseded fragments deleted. mastmirror's readers follow the manifest
only, so they see one commit or the next, whole, at any instant, also after a kill -9 at any
point of a write. Files no manifest names (a write killed before its commit, a cleanup
killed after it) are deleted by the next writer's ``recover``, which also rewrites the HATS
files; until then a reader that lists directories (hats, lsdb, DuckDB) may see them.

**Tiling.** A row goes to the partition whose pixel contains it; where there is none, to the
coarsest pixel that overlaps no partition. A partition over ``max_rows`` rows splits into
its children, recursively (HATS's adaptive tiling, grown by appends instead of planned from a
histogram). A partition with more than ``max_fragments`` files is compacted, smallest files
first (size-tiered), so a row is rewritten about log(partition / append) times.

**Replacement.** A catalog of a newer generation (the archive reprocessed the exposure)
replaces every row of its obs_id in the same commit; the catalogs file says which partitions
held them.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from daemon.catalog_rows import CatalogRows
from daemon.healpix import ORDER, hp29, pixel_range, shift
from daemon.indexstore import IndexStore

MANIFEST = "_mastmirror/manifest.json"
FORMAT = "mastmirror-index/1"
DEFAULT_MAX_ROWS = 1_000_000  # hats-import's default pixel threshold
DEFAULT_MAX_FRAGMENTS = 8
ROW_GROUP = 8_192  # rows per Parquet row group: what a small cone search decodes
MAX_SPLIT_ORDER = 20  # a 0.2" pixel; no real field is denser than max_rows there


def _field(name: str, kind: pa.DataType, unit: str, description: str) -> pa.Field:
    return pa.field(name, kind, metadata={"unit": unit, "description": description})


SCHEMA = pa.schema([
    _field("_healpix_29", pa.int64(), "", "HEALPix order-29 nested pixel (HATS spatial index)"),
    _field("obs_id", pa.string(), "", "dataset (ROOTNAME) of the exposure"),
    _field("generation", pa.int32(), "", "catalog generation (2+ after the archive "
           "reprocessed the exposure)"),
    _field("filter", pa.string(), "", "filter of the exposure (FILTER)"),
    _field("expstart", pa.float64(), "d", "exposure start, MJD (UTC) (EXPSTART)"),
    _field("exptime", pa.float64(), "s", "exposure time (EXPTIME)"),
    _field("number", pa.int32(), "", "source number in the catalog"),
    _field("x", pa.float64(), "pix", "x, 1-based"),
    _field("y", pa.float64(), "pix", "y, 1-based"),
    _field("ra", pa.float64(), "deg", "right ascension (ICRS)"),
    _field("dec", pa.float64(), "deg", "declination (ICRS)"),
    _field("mag_auto", pa.float32(), "mag", "AB magnitude, AUTO"),
    _field("magerr_auto", pa.float32(), "mag", "error of mag_auto"),
    _field("flux_auto", pa.float32(), "", "flux in the AUTO aperture (the catalog's FLUXUNIT)"),
    _field("flags", pa.int16(), "", "SEP object flags"),
    _field("catalog_key", pa.string(), "", "the catalog in the output store"),
])
STRING_COLUMNS = [f.name for f in SCHEMA if pa.types.is_string(f.type)]
REGISTRY_SCHEMA = pa.schema([
    ("obs_id", pa.string()), ("generation", pa.int32()), ("catalog_key", pa.string()),
    ("rows", pa.int64()), ("skipped", pa.int64()), ("cells", pa.list_(pa.int64())),
])

Key = tuple[int, int]  # (order, npix) of a partition


class IndexFault(Exception):
    """The index cannot be read or written; the message says why."""


class IndexConflict(IndexFault):
    """Another writer committed to the index since this one read it."""


@dataclass(frozen=True)
class Fragment:
    """One Parquet file of a partition."""

    name: str
    rows: int
    size: int  # bytes
    bbox: tuple[float, float, float, float]  # ra min, ra max, dec min, dec max (degrees)


@dataclass
class Manifest:
    """What one commit holds."""

    commit: int
    max_rows: int
    max_fragments: int
    registry: str | None
    created: str
    partitions: dict[Key, list[Fragment]] = field(default_factory=dict)
    catalogs: int = 0

    @property
    def rows(self) -> int:
        """Detections held."""
        return sum(f.rows for frags in self.partitions.values() for f in frags)

    def fragments(self) -> Iterable[Fragment]:
        """Every live fragment."""
        for frags in self.partitions.values():
            yield from frags

    def to_json(self) -> bytes:
        """The manifest file."""
        return json.dumps({
            "format": FORMAT, "commit": self.commit, "max_rows": self.max_rows,
            "max_fragments": self.max_fragments, "registry": self.registry,
            "created": self.created, "catalogs": self.catalogs, "rows": self.rows,
            "partitions": [{"order": k[0], "npix": k[1],
                            "fragments": [[f.name, f.rows, f.size, *f.bbox]
                                          for f in frags]}
                           for k, frags in sorted(self.partitions.items(), key=_start)],
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """Parse a manifest file; IndexFault naming ``where`` if it is not one."""
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
            parts = {(int(p["order"]), int(p["npix"])):
                     [Fragment(str(f[0]), int(f[1]), int(f[2]),
                               (float(f[3]), float(f[4]), float(f[5]), float(f[6])))
                      for f in p["fragments"]]
                     for p in doc["partitions"]}
            return cls(commit=int(doc["commit"]), max_rows=int(doc["max_rows"]),
                       max_fragments=int(doc["max_fragments"]), registry=doc["registry"],
                       created=str(doc["created"]), partitions=parts,
                       catalogs=int(doc["catalogs"]))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise IndexFault(f"{where}: not a mastmirror index manifest ({exc})") from None


def _start(item: tuple[Key, Any]) -> int:
    return pixel_range(*item[0])[0]


def read_manifest(store: IndexStore) -> Manifest | None:
    """The current commit of the index at ``store``, or None if it has none yet."""
    raw = store.read(MANIFEST)
    return None if raw is None else Manifest.from_json(raw, f"{store.url}/{MANIFEST}")


def read_registry(store: IndexStore, manifest: Manifest) -> pa.Table:
    """The catalogs a commit holds (REGISTRY_SCHEMA); FileNotFoundError if its file is
    gone (a later commit replaced it)."""
    raw = store.read(manifest.registry) if manifest.registry else None
    if raw is None:
        raise FileNotFoundError(f"{store.url}: the manifest names {manifest.registry}, "
                                "which is missing")
    return pq.read_table(io.BytesIO(raw), schema=REGISTRY_SCHEMA)


def read_fragment(store: IndexStore, name: str, columns: Sequence[str] | None = None
                  ) -> pa.Table:
    """A whole fragment (or some of its columns)."""
    with store.open(name) as fh:
        return pq.read_table(fh, columns=list(columns) if columns else None, schema=SCHEMA)


def nuniq(order: int, npix: int) -> int:
    """HEALPix NUNIQ: one integer for a pixel of any order."""
    return 4 * 4**order + npix


def from_nuniq(value: int) -> Key:
    """(order, npix) of a NUNIQ number."""
    order = (value.bit_length() - 3) // 2
    return order, value - 4 * 4**order


def _overlaps(a: Key, b: Key) -> bool:
    alo, ahi = pixel_range(*a)
    blo, bhi = pixel_range(*b)
    return alo < bhi and blo < ahi


def _dictionary(values: list[str], index: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()),
                                          pa.array(values, pa.string())).cast(pa.string())


def rows_table(catalogs: Sequence[CatalogRows]) -> tuple[pa.Table, np.ndarray]:
    """The index rows of ``catalogs``, sorted by ``_healpix_29``, and each row's position
    in ``catalogs``."""
    counts = np.array([c.rows for c in catalogs], dtype=np.int64)
    which = np.repeat(np.arange(len(catalogs), dtype=np.int32), counts)
    col = {name: np.concatenate([c.columns[name] for c in catalogs]) if catalogs else
           np.empty(0) for name in ("number", "x", "y", "ra", "dec", "mag_auto",
                                    "magerr_auto", "flux_auto", "flags")}
    hp = hp29(col["ra"], col["dec"])
    order = np.argsort(hp, kind="stable")
    which = which[order]
    arrays = {
        "_healpix_29": hp[order],
        "obs_id": _dictionary([c.obs_id for c in catalogs], which),
        "generation": np.array([c.generation for c in catalogs], np.int32)[which],
        "filter": _dictionary([c.filter for c in catalogs], which),
        "expstart": np.array([c.expstart for c in catalogs], np.float64)[which],
        "exptime": np.array([c.exptime for c in catalogs], np.float64)[which],
        **{name: values[order] for name, values in col.items()},
        "catalog_key": _dictionary([c.catalog_key for c in catalogs], which),
    }
    table = pa.Table.from_arrays([pa.array(arrays[f.name], f.type) if isinstance(
        arrays[f.name], np.ndarray) else arrays[f.name] for f in SCHEMA], schema=SCHEMA)
    return table, which


@dataclass
class AddOutcome:
    """What one ``add`` did."""

    added: list[str] = field(default_factory=list)  # obs_ids newly held
    replaced: list[str] = field(default_factory=list)  # obs_ids whose older rows went
    already: list[str] = field(default_factory=list)  # held already at this generation
    stale: list[str] = field(default_factory=list)  # held at a newer generation
    rows: int = 0
    commit: int = 0


class IndexWriter:
    """The one writer of an index (the daemon, or ``index rebuild``; not both at once)."""

    def __init__(self, store: IndexStore, manifest: Manifest, registry: pa.Table) -> None:
        self.store = store
        self.published = manifest
        self.layout: dict[Key, list[Fragment]] = {k: list(v) for k, v in
                                                  manifest.partitions.items()}
        self.registry = registry
        self._held = dict(zip(registry["obs_id"].to_pylist(),
                              zip(registry["generation"].to_pylist(),
                                  registry["catalog_key"].to_pylist(), strict=True),
                              strict=True))
        self._live = {f.name for f in manifest.fragments()}  # what readers may be reading
        self._retired: list[str] = []  # published files to delete after the next commit
        self._unwritten: dict[str, bytes] = {}  # new fragments, written together
        self._schema_written = False

    @classmethod
    def open(cls, url: str, *, max_rows: int = DEFAULT_MAX_ROWS,
             max_fragments: int = DEFAULT_MAX_FRAGMENTS) -> IndexWriter:
        """Open (or start) the index at ``url`` and ``recover`` it. The thresholds apply to
        a new index; an existing one keeps those it was made with."""
        if max_rows < 1 or max_fragments < 2:
            raise ValueError("max_rows must be >= 1 and max_fragments >= 2")
        store = IndexStore(url)
        manifest = read_manifest(store)
        if manifest is None:
            manifest = Manifest(commit=0, max_rows=max_rows, max_fragments=max_fragments,
                                registry=None,
                                created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MUTC"))
            registry = REGISTRY_SCHEMA.empty_table()
        else:
            registry = read_registry(store, manifest)
        writer = cls(store, manifest, registry)
        writer.recover()
        return writer

    # -- what is held --------------------------------------------------------------------

    def held(self) -> dict[str, tuple[int, str]]:
        """obs_id -> (generation, catalog key) of every catalog the index holds."""
        return dict(self._held)

    # -- writing -------------------------------------------------------------------------

    def add(self, catalogs: Sequence[CatalogRows], *, publish: bool = True) -> AddOutcome:
        """Add catalogs (a newer generation replaces the older rows of its obs_id) in one
        commit; with ``publish=False`` the work stays unpublished until ``publish``."""
        out = AddOutcome(commit=self.published.commit)
        held = self._held
        chosen: dict[str, CatalogRows] = {}
        for c in catalogs:
            prev = chosen.get(c.obs_id)
            if prev is None or c.generation >= prev.generation:
                chosen[c.obs_id] = c
        accepted: list[CatalogRows] = []
        for c in chosen.values():
            gen, key = held.get(c.obs_id, (None, None))
            if gen is not None and gen > c.generation:
                out.stale.append(c.obs_id)
            elif gen == c.generation and key == c.catalog_key:
                out.already.append(c.obs_id)
            else:
                accepted.append(c)
                (out.replaced if gen is not None else out.added).append(c.obs_id)
        if not accepted:
            return out
        table, which = rows_table(accepted)
        pending: dict[Key, list[pa.Table]] = {}
        if out.replaced:
            self._remove(out.replaced, pending)
        keys, part = self._place(table["_healpix_29"].to_numpy())
        bounds = np.flatnonzero(np.diff(part)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(part)], strict=True):
            if hi > lo:
                pending.setdefault(keys[part[lo]], []).append(table.slice(lo, hi - lo))
        for key, tables in pending.items():
            self._settle(key, tables)
        cells = self._cells(table["_healpix_29"].to_numpy(), which, len(accepted))
        gone = pa.array([c.obs_id for c in accepted], pa.string())
        self.registry = pa.concat_tables([
            self.registry.filter(pc.invert(pc.is_in(self.registry["obs_id"], gone))),
            pa.table({"obs_id": gone,
                      "generation": pa.array([c.generation for c in accepted], pa.int32()),
                      "catalog_key": [c.catalog_key for c in accepted],
                      "rows": pa.array([c.rows for c in accepted], pa.int64()),
                      "skipped": pa.array([c.skipped for c in accepted], pa.int64()),
                      "cells": pa.array(cells, pa.list_(pa.int64()))},
                     schema=REGISTRY_SCHEMA)])
        self._held.update((c.obs_id, (c.generation, c.catalog_key)) for c in accepted)
        out.rows = table.num_rows
        if publish:
            self.publish()
        else:
            self._flush()
        out.commit = self.published.commit
        return out

    def reset(self) -> None:
        """Start again from an empty index (``index rebuild``); the current one stays what
        readers see until ``publish``."""
        for frag in [f for frags in self.layout.values() for f in frags]:
            self._retire(frag.name)
        self.layout = {}
        self.registry = REGISTRY_SCHEMA.empty_table()
        self._held = {}

    def _remove(self, obs_ids: list[str], pending: dict[Key, list[pa.Table]]) -> None:
        """Take every row of ``obs_ids`` out of the partitions that may hold them."""
        wanted = pa.array(obs_ids, pa.string())
        rows = self.registry.filter(pc.is_in(self.registry["obs_id"], wanted))
        cells = {from_nuniq(v) for v in pc.list_flatten(rows["cells"]).to_pylist()}
        for key in [k for k in self.layout if any(_overlaps(k, c) for c in cells)]:
            kept = []
            for frag in self.layout[key]:
                t = self._read(frag.name)
                mask = pc.is_in(t["obs_id"], wanted)
                if not pc.any(mask).as_py():
                    kept.append(frag)
                    continue
                self._retire(frag.name)
                rest = t.filter(pc.invert(mask))
                pending.setdefault(key, []).append(rest)
            self.layout[key] = kept

    def _place(self, hp: np.ndarray) -> tuple[list[Key], np.ndarray]:
        """The partition of each row (index into the returned keys); rows outside every
        partition get new ones: the coarsest pixel that overlaps no existing partition."""
        keys = sorted(self.layout, key=lambda k: pixel_range(*k)[0])
        los = np.array([pixel_range(*k)[0] for k in keys], dtype=np.int64)
        his = np.array([pixel_range(*k)[1] for k in keys], dtype=np.int64)
        part = np.searchsorted(los, hp, side="right") - 1
        inside = (part >= 0) & (hp < his[np.clip(part, 0, None)]) if keys else \
            np.zeros(len(hp), dtype=bool)
        out = np.where(inside, part, -1)
        todo = np.flatnonzero(~inside)
        if len(todo):
            order = np.full(len(todo), -1)
            for k in range(ORDER + 1):
                s = shift(k)
                lo = (hp[todo] >> s) << s
                j = np.searchsorted(los, lo, side="left")
                taken = (j < len(los)) & (los[np.clip(j, 0, len(los) - 1)] < lo + (1 << s)) \
                    if len(los) else np.zeros(len(todo), dtype=bool)
                order[(order < 0) & ~taken] = k
                if (order >= 0).all():
                    break
            new = sorted({(int(o), int(h >> shift(int(o)))) for o, h in zip(order, hp[todo],
                                                                              strict=True)})
            keys = sorted(keys + new, key=lambda k: pixel_range(*k)[0])
            for key in new:
                self.layout[key] = []
            los = np.array([pixel_range(*k)[0] for k in keys], dtype=np.int64)
            out = np.searchsorted(los, hp, side="right") - 1
        return keys, out

    def _settle(self, key: Key, tables: list[pa.Table]) -> None:
        """Give ``key`` its new rows: one more fragment, then a split or a compaction."""
        frags = self.layout.pop(key, [])
        total = sum(f.rows for f in frags) + sum(t.num_rows for t in tables)
        if total == 0:
            return
        limits = self.published
        if total > limits.max_rows and key[0] < MAX_SPLIT_ORDER:
            whole = _sorted(pa.concat_tables([self._read(f.name) for f in frags] + tables))
            for f in frags:
                self._retire(f.name)
            for child, rows in self._split(key, whole):
                self.layout[child] = [self._write(child, rows)]
            return
        if any(t.num_rows for t in tables):
            frags.append(self._write(key, _sorted(pa.concat_tables(tables))))
        if len(frags) > limits.max_fragments:
            frags.sort(key=lambda f: f.rows)
            # Merge the smallest files: at least enough to halve the count, and on while
            # the merged total is at least half the next file (so no file of about its
            # size is left to be merged with it soon after). Sizes grow geometrically,
            # and a row is rewritten about log(partition / append) times, not once per
            # merge.
            m, total = 2, frags[0].rows + frags[1].rows
            while m < len(frags) and (2 * total >= frags[m].rows
                                      or len(frags) - m + 1 > limits.max_fragments // 2):
                total += frags[m].rows
                m += 1
            whole = _sorted(pa.concat_tables([self._read(f.name) for f in frags[:m]]))
            for f in frags[:m]:
                self._retire(f.name)
            frags = [*frags[m:], self._write(key, whole)]
        self.layout[key] = frags

    def _split(self, key: Key, table: pa.Table) -> list[tuple[Key, pa.Table]]:
        if table.num_rows <= self.published.max_rows or key[0] >= MAX_SPLIT_ORDER:
            return [(key, table)]
        child = table["_healpix_29"].to_numpy() >> shift(key[0] + 1)
        bounds = np.r_[0, np.flatnonzero(np.diff(child)) + 1, len(child)]
        out = []
        for lo, hi in itertools.pairwise(bounds):
            out += self._split((key[0] + 1, int(child[lo])), table.slice(lo, hi - lo))
        return out

    def _cells(self, hp: np.ndarray, which: np.ndarray, n: int) -> list[list[int]]:
        """The partitions (NUNIQ) holding each new catalog's rows, in the final layout."""
        keys = sorted(self.layout, key=lambda k: pixel_range(*k)[0])
        los = np.array([pixel_range(*k)[0] for k in keys], dtype=np.int64)
        part = np.searchsorted(los, hp, side="right") - 1
        pairs = np.unique(which.astype(np.int64) * (len(keys) + 1) + part)
        cells: list[list[int]] = [[] for _ in range(n)]
        for p in pairs.tolist():
            cat, idx = divmod(p, len(keys) + 1)
            cells[cat].append(nuniq(*keys[idx]))
        return cells

    def _write(self, key: Key, table: pa.Table) -> Fragment:
        order, npix = key
        name = (f"dataset/Norder={order}/Dir={npix // 10000 * 10000}/Npix={npix}/"
                f"{self.published.commit + 1:010d}-{secrets.token_hex(4)}.parquet")
        buf = pa.BufferOutputStream()
        # Dictionaries for the strings only: trying them on float columns halves the speed.
        pq.write_table(table, buf, row_group_size=ROW_GROUP, compression="zstd",
                       use_dictionary=STRING_COLUMNS)
        data = buf.getvalue().to_pybytes()
        self._unwritten[name] = data
        ra, dec = table["ra"].to_numpy(), table["dec"].to_numpy()
        return Fragment(name, table.num_rows, len(data), (float(ra.min()), float(ra.max()),
                                                          float(dec.min()), float(dec.max())))

    def _read(self, name: str) -> pa.Table:
        data = self._unwritten.get(name)
        if data is None:
            return read_fragment(self.store, name)
        return pq.read_table(pa.BufferReader(data), schema=SCHEMA)

    def _retire(self, name: str) -> None:
        if name in self._live:
            self._retired.append(name)
        elif self._unwritten.pop(name, None) is None:
            self.store.delete(name)  # written, never published: no reader can be using it

    def _flush(self) -> None:
        self.store.write_many(self._unwritten.items())
        self._unwritten.clear()

    # -- commit --------------------------------------------------------------------------

    def publish(self) -> None:
        """Commit: the new catalogs file, then the manifest (the atomic step), then the
        HATS files and the deletion of what the commit superseded."""
        current = read_manifest(self.store)
        if (current.commit if current else 0) != self.published.commit:
            raise IndexConflict(f"{self.store.url}: another writer committed (commit "
                                f"{current.commit if current else 0}, expected "
                                f"{self.published.commit}); only one may write an index")
        old = self.published
        commit = old.commit + 1
        registry = f"_mastmirror/catalogs/{commit:010d}.parquet"
        buf = pa.BufferOutputStream()
        pq.write_table(self.registry, buf, compression="zstd")
        self._unwritten[registry] = buf.getvalue().to_pybytes()
        self._flush()
        manifest = Manifest(commit=commit, max_rows=old.max_rows,
                            max_fragments=old.max_fragments, registry=registry,
                            created=old.created,
                            partitions={k: list(v) for k, v in self.layout.items() if v},
                            catalogs=self.registry.num_rows)
        self.store.write(MANIFEST, manifest.to_json())
        self.published = manifest
        self.layout = {k: list(v) for k, v in manifest.partitions.items()}
        self._live = {f.name for f in manifest.fragments()}
        self._write_hats_files()
        self.store.delete_many(self._retired + ([old.registry] if old.registry else []))
        self._retired = []

    def recover(self) -> list[str]:
        """Delete what no manifest names (a write or a cleanup killed part-way) and rewrite
        the HATS files from the manifest; returns the names deleted."""
        m = self.published
        keep = {f.name for f in m.fragments()} | {MANIFEST} | ({m.registry} if m.registry
                                                               else set())
        gone = []
        for entry in self.store.list():
            base = entry.name.rsplit("/", 1)[-1]
            leftover = base.startswith(".") and ".tmp-" in base
            ours = entry.name.startswith(("dataset/Norder=", "_mastmirror/"))
            if entry.name not in keep and (leftover or ours):
                self.store.delete(entry.name)
                gone.append(entry.name)
        if m.commit:
            self._write_hats_files()
        self.store.prune_empty_dirs()
        return gone

    def _write_hats_files(self) -> None:
        m = self.published
        keys = sorted(m.partitions)
        files = {"partition_info.csv": ("Norder,Npix\n" + "".join(
            f"{o},{n}\n" for o, n in keys)).encode()}
        props = {
            "obs_collection": "mastmirror_detections",
            "dataproduct_type": "source",
            "hats_nrows": str(m.rows),
            "hats_col_ra": "ra",
            "hats_col_dec": "dec",
            "hats_col_healpix": "_healpix_29",
            "hats_col_healpix_order": str(ORDER),
            "hats_npix_suffix": "/",
            "hats_max_rows": str(m.max_rows),
            "hats_order": str(max((o for o, _ in keys), default=0)),
            "hats_estsize": str(sum(f.size for f in m.fragments()) // 1024),
            "hats_builder": f"mastmirror v{_version()}",
            "hats_creation_date": m.created,
            "hats_version": "v1.0",
        }
        text = ("#HATS catalog\n" + "".join(f"{k}={v}\n" for k, v in props.items())).encode()
        files["hats.properties"] = files["properties"] = text
        if not self._schema_written:  # once per writer: it never changes
            buf = pa.BufferOutputStream()
            pq.write_metadata(SCHEMA, buf)
            files["dataset/_common_metadata"] = buf.getvalue().to_pybytes()
        self.store.write_many(files.items())
        self._schema_written = True


def _sorted(table: pa.Table) -> pa.Table:
    # One chunk first: take() over many chunks is 25 times slower. The parts are sorted
    # runs already, which a stable (merge) sort takes in linear time.
    table = table.combine_chunks()
    return table.take(np.argsort(table["_healpix_29"].to_numpy(), kind="stable"))


def _version() -> str:
    from daemon import __version__

    return __version__
