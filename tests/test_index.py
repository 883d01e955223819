"""The detection index: cone searches against a brute-force scan, tiling, replacement,
HATS interoperability (hats, lsdb, pyarrow read the same rows), and S3.

The catalogs are written by the real catalog writer (tests/index_catalogs.py) with fields
placed where searches are hard: across RA 0/360, at both poles, on the corners of HEALPix
base pixels. The truth is computed independently: astropy reads the catalog files and
SkyCoord measures the separations.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import astropy.units as u
import numpy as np
import pyarrow.dataset as pads
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from index_catalogs import Exposure, catalog_bytes, field_exposure, obs_id

from daemon.catalog_rows import CatalogError, read_catalog
from daemon.healpix import hp29, shift
from daemon.index import IndexWriter, read_fragment, read_manifest, read_registry
from daemon.indexstore import IndexStore
from daemon.search import IndexReader, NoIndex, SearchError, parse_position, search

# Fields centred where cones are hard, then fields at random places.
_HARD = [(359.995, 0.01), (0.005, -0.02), (0.0, 89.985), (200.0, 89.99), (10.0, -89.98),
         (45.0, 41.8103149), (135.0, -41.8103149), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0)]
MAX_ROWS = 700  # small, so partitions split to several orders


def _exposures() -> list[Exposure]:
    rng = np.random.default_rng(5)
    out = []
    for i, (ra, dec) in enumerate(_HARD):
        # Three overlapping exposures per hard field: dense enough to split there.
        out += [field_exposure(obs_id(3 * i + k), ra, dec, n=260, seed=3 * i + k)
                for k in range(3)]
    for i in range(30, 90):
        ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        out.append(field_exposure(obs_id(i), ra, dec, n=int(rng.integers(0, 200)), seed=i))
    return out


def _rows(e: Exposure, raw: bytes, generation: int = 1) -> object:
    return read_catalog(raw, obs_id=e.obs_id, generation=generation, catalog_key=e.catalog_key)


class Truth:
    """Every detection, read by astropy, with SkyCoord for separations."""

    def __init__(self, catalogs: dict[str, bytes]) -> None:
        ids, numbers, ras, decs, mags, filters = [], [], [], [], [], []
        for oid, raw in catalogs.items():
            with fits.open(io.BytesIO(raw)) as hdul:
                d = hdul[1].data
                filt = hdul[1].header["FILTER"]
            ids += [oid] * len(d)
            numbers.append(np.asarray(d["number"]))
            ras.append(np.asarray(d["ra"], float))
            decs.append(np.asarray(d["dec"], float))
            mags.append(np.asarray(d["mag_auto"], float))
            filters += [filt] * len(d)
        self.ids = np.array(ids)
        self.numbers = np.concatenate(numbers)
        self.ra, self.dec = np.concatenate(ras), np.concatenate(decs)
        self.mag = np.concatenate(mags)
        self.filters = np.array(filters)
        self.coords = SkyCoord(self.ra * u.deg, self.dec * u.deg)

    def cone(self, ra: float, dec: float, radius_arcsec: float, *, filter: str | None = None,
             mag_max: float | None = None) -> set[tuple[str, int]]:
        sep = self.coords.separation(SkyCoord(ra * u.deg, dec * u.deg)).arcsec
        keep = sep <= radius_arcsec
        if filter is not None:
            keep &= self.filters == filter
        if mag_max is not None:
            keep &= self.mag <= mag_max
        return set(zip(self.ids[keep].tolist(), self.numbers[keep].tolist(), strict=True))


def _found(table: object) -> set[tuple[str, int]]:
    return set(zip(table["obs_id"].to_pylist(), table["number"].to_pylist(), strict=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Truth, list[Exposure]]:
    """An index built by many small commits (splits, compactions), and its truth."""
    root = tmp_path_factory.mktemp("index")
    exposures = _exposures()
    catalogs = {e.obs_id: catalog_bytes(e) for e in exposures}
    url = f"file://{root}/idx"
    writer = IndexWriter.open(url, max_rows=MAX_ROWS, max_fragments=3)
    for start in range(0, len(exposures), 7):
        writer.add([_rows(e, catalogs[e.obs_id]) for e in exposures[start:start + 7]])
    return url, Truth(catalogs), exposures


def test_healpix_index_equals_cdshealpix_through_hats() -> None:
    from hats.pixel_math.spatial_index import compute_spatial_index

    rng = np.random.default_rng(2)
    ra = np.concatenate([rng.uniform(0, 360, 100_000), rng.uniform(-1e-9, 1e-9, 1000) % 360,
                         rng.uniform(0, 360, 2000)])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 100_000))),
                          rng.uniform(-80, 80, 1000), rng.choice([-1, 1], 2000)
                          * rng.uniform(89.9, 90 - 1e-9, 2000)])
    np.testing.assert_array_equal(hp29(ra, dec), compute_spatial_index(ra, dec))


def test_cones_equal_a_brute_force_scan(built: tuple[str, Truth, list[Exposure]]) -> None:
    url, truth, exposures = built
    rng = np.random.default_rng(9)
    cones = [(0.0, 0.0, 120.0), (359.999, 0.0, 90.0), (0.0, 90.0, 200.0), (77.0, 90.0, 1.0),
             (0.0, -90.0, 300.0), (10.0, -89.99, 60.0), (45.0, 41.8103149, 150.0),
             (135.0, -41.8103149, 150.0), (90.0, 0.0, 100.0), (180.0, 0.0, 3600.0),
             (0.0, 0.0, 20 * 3600.0), (123.0, 45.0, 180 * 3600.0)]
    cones += [(truth.ra[i], truth.dec[i], rng.uniform(0.5, 200))
              for i in rng.integers(0, len(truth.ra), 70)]
    cones += [(rng.uniform(0, 360), rng.uniform(-90, 90), rng.uniform(1, 7200))
              for _ in range(10)]
    crossing = 0
    for ra, dec, radius in cones:
        got = search(url, ra, dec, radius)
        assert _found(got) == truth.cone(ra, dec, radius), (ra, dec, radius)
        assert list(got["separation"].to_numpy()) == sorted(got["separation"].to_numpy())
        if len(got):
            pixels = {int(p) >> shift(3) for p in hp29(got["ra"].to_numpy(),
                                                         got["dec"].to_numpy())}
            crossing += len(pixels) > 1
    assert crossing >= 5  # cones across partition boundaries were really tested
    e = exposures[0]
    got = search(url, e.ra[0], e.dec[0], 600, filter=e.filter.lower(), mag_max=25.0)
    assert _found(got) == truth.cone(e.ra[0], e.dec[0], 600, filter=e.filter, mag_max=25.0)
    assert got.num_rows > 0


def test_tiling_stays_balanced_and_files_few(built: tuple[str, Truth, list[Exposure]]) -> None:
    url, truth, _ = built
    m = read_manifest(IndexStore(url))
    assert m is not None and m.rows == len(truth.ra) and m.catalogs == 90
    assert len({k[0] for k in m.partitions}) >= 3  # adaptive: several orders
    for (order, npix), frags in m.partitions.items():
        assert sum(f.rows for f in frags) <= MAX_ROWS
        assert len(frags) <= 3
        for f in frags:
            hp = read_fragment(IndexStore(url), f.name, ["_healpix_29"])["_healpix_29"]
            assert set((hp.to_numpy() >> shift(order)).tolist()) == {npix}


def test_hats_lsdb_and_pyarrow_read_the_same_rows(built: tuple[str, Truth, list[Exposure]]
                                                  ) -> None:
    import hats
    import lsdb

    url, truth, _ = built
    path = url.removeprefix("file://")
    everything = set(zip(truth.ids.tolist(), truth.numbers.tolist(), strict=True))
    catalog = hats.read_hats(path)
    assert catalog.catalog_info.total_rows == len(truth.ra)
    frames = [catalog.read_pixel_to_pandas(p) for p in catalog.get_healpix_pixels()]
    assert {(o, n) for f in frames for o, n in zip(f["obs_id"], f["number"], strict=True)} \
        == everything
    table = pads.dataset(f"{path}/dataset", format="parquet", partitioning="hive").to_table()
    assert _found(table) == everything and table.num_rows == len(truth.ra)
    lazy = lsdb.open_catalog(path)
    for ra, dec, radius in [(0.0, 0.0, 120.0), (45.0, 41.8103149, 150.0), (0.0, 90.0, 200.0)]:
        frame = lazy.cone_search(ra, dec, radius).compute()
        assert set(zip(frame["obs_id"], frame["number"], strict=True)) == \
            _found(search(url, ra, dec, radius))


def test_recatalogued_exposure_replaces_its_rows(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/idx"
    first = [field_exposure(obs_id(i), 30.0 + i, -5.0, n=120, seed=i) for i in range(6)]
    writer = IndexWriter.open(url, max_rows=300, max_fragments=3)
    writer.add([_rows(e, catalog_bytes(e)) for e in first])
    # The archive reprocessed exposure 2: its new catalog has other rows, far away.
    moved = field_exposure(first[2].obs_id, 250.0, 60.0, n=77, seed=99)
    out = writer.add([_rows(moved, catalog_bytes(moved), generation=2)])
    assert out.replaced == [first[2].obs_id]
    reader = IndexReader(url)
    old = reader.cone(first[2].ra[0], first[2].dec[0], 3600)
    assert first[2].obs_id not in set(old["obs_id"].to_pylist())
    new = reader.cone(250.0, 60.0, 600)
    assert new.num_rows == 77 and set(new["generation"].to_pylist()) == {2}
    # The same generation again, or an older one, changes nothing.
    again = writer.add([_rows(moved, catalog_bytes(moved), generation=2),
                        _rows(first[2], catalog_bytes(first[2]), generation=1)])
    assert again.already == [first[2].obs_id] and again.commit == out.commit
    stale = writer.add([_rows(first[2], catalog_bytes(first[2]), generation=1)])
    assert stale.stale == [first[2].obs_id] and stale.commit == out.commit
    reopened = IndexWriter.open(url)
    assert reopened.held()[first[2].obs_id][0] == 2
    total = sum(f.rows for f in read_manifest(IndexStore(url)).fragments())
    assert total == 5 * 120 + 77


def test_s3_index_answers_like_the_local_one(built: tuple[str, Truth, list[Exposure]],
                                             aws: str) -> None:
    import boto3

    _url, truth, exposures = built
    bucket = f"index-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=aws, region_name="us-east-1").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/mirror/index"
    writer = IndexWriter.open(url, max_rows=MAX_ROWS, max_fragments=3)
    writer.add([_rows(e, catalog_bytes(e)) for e in exposures[:40]])
    writer.add([_rows(e, catalog_bytes(e)) for e in exposures[40:]])
    for ra, dec, radius in [(0.0, 0.0, 120.0), (0.0, 90.0, 200.0), (truth.ra[7], truth.dec[7],
                                                                     90.0)]:
        assert _found(search(url, ra, dec, radius)) == truth.cone(ra, dec, radius)
    store = IndexStore(url)
    store.write("dataset/Norder=0/Dir=0/Npix=3/0000000999-deadbeef.parquet", b"half")
    assert IndexWriter.open(url).recover() == []  # open() already recovered it
    assert "dataset/Norder=0/Dir=0/Npix=3/0000000999-deadbeef.parquet" not in \
        {e.name for e in store.list("dataset")}
    assert read_registry(store, read_manifest(store)).num_rows == len(exposures)


def test_positions_in_degrees_or_sexagesimal() -> None:
    assert parse_position("150.5", "-2.25") == (150.5, -2.25)
    assert parse_position(-10.0, 0) == (350.0, 0.0)
    ra, dec = parse_position("10:21:03.2", "-41:12:00")
    assert (round(ra, 6), round(dec, 6)) == (155.263333, -41.2)
    ra, dec = parse_position("155d15m48s", "+41d12m")
    assert (round(ra, 6), round(dec, 6)) == (155.263333, 41.2)
    for bad in [("12", "95"), ("nonsense", "1"), ("nan", "0")]:
        with pytest.raises(SearchError):
            parse_position(*bad)


def test_sexagesimal_spellings_read_as_skycoord_reads_them() -> None:
    rng = np.random.default_rng(4)
    for ra_deg, dec_deg in zip(rng.uniform(0, 360, 60), rng.uniform(-90, 90, 60),
                               strict=True):
        sky = SkyCoord(ra_deg * u.deg, dec_deg * u.deg)
        for sep in (":", " ", None):
            if sep is None:
                ra, dec = sky.ra.to_string("hourangle"), sky.dec.to_string(alwayssign=True)
            else:
                ra = sky.ra.to_string("hourangle", sep=sep, precision=3, pad=True)
                dec = sky.dec.to_string(sep=sep, precision=2, alwayssign=True, pad=True)
            want = SkyCoord(ra, dec, unit=(u.hourangle, u.deg))
            got = parse_position(ra, dec)
            assert got == pytest.approx((want.ra.deg, want.dec.deg), abs=1e-11), (ra, dec)
    assert parse_position("0h30m00s", "-0d30m00s") == pytest.approx((7.5, -0.5))
    assert parse_position("12d30m00s", "-00:30:00") == pytest.approx((12.5, -0.5))


def test_unusable_catalogs_are_refused_with_a_reason() -> None:
    e = field_exposure(obs_id(1), 10.0, 10.0, n=5, seed=1)
    raw = catalog_bytes(e)
    cases = [(b"not fits", "not a FITS file"), (raw[:-3000], "truncated"),
             (raw.replace(b"TTYPE4  = 'ra      '", b"TTYPE4  = 'rx      '"), "no column ra")]
    for data, why in cases:
        with pytest.raises(CatalogError, match=why):
            read_catalog(data, obs_id=e.obs_id, generation=1, catalog_key=e.catalog_key)
    with pytest.raises(CatalogError, match="not iaab"):
        read_catalog(raw, obs_id="iaabzzzzq", generation=1, catalog_key="k")


@pytest.fixture
def no_index(tmp_path: Path) -> Iterator[str]:
    yield f"file://{tmp_path}/nothing"


def test_searching_where_there_is_no_index_says_so(no_index: str) -> None:
    with pytest.raises(NoIndex, match="no detection index"):
        search(no_index, 1.0, 2.0, 3.0)
