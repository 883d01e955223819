"""The output store as the reconciler reads it: the same answers whether datasets in flight
share a listing or are listed alone, and fewer LIST requests on S3 when they share one.

boto3 against moto through the counting proxy (no faults), and a directory store.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from astropy.io import fits
from s3_fault_proxy import S3FaultProxy

from daemon import outputs
from daemon.outputs import OutputStore
from lambda_sep.storage import FileStore, open_store, s3_client


def _key(dataset: str) -> str:
    # A third of them filed under a folder that is not their root, as MAST files some
    # (docs/ARCHIVE.md): a listing shared by one 4-character directory must still answer.
    folder = dataset[:8] + "z" if int(dataset[-1]) % 3 == 0 else dataset
    return f"hst/public/{dataset[:4]}/{folder}/{dataset}_flt.fits"


# Three programs; in each, datasets that are done (catalog), failed (marker), in flight
# with no result yet, and some with both a stale marker and a catalog.
DATASETS = [f"{prog}{visit:02d}{exp:03d}" for prog in ("ib1a", "ib2b", "ic3c")
            for visit in range(3) for exp in range(12)]


def _fill(url: str, datasets: list[str], *, extra: list[str] = ()) -> dict[str, str]:
    """Write results for ``datasets`` (by position: catalog, marker, both, nothing) and a
    catalog for every ``extra`` dataset; return each dataset's expected kind."""
    store = open_store(url)
    expected = {}
    writes = []
    for i, ds in enumerate(datasets):
        stem = _key(ds)[: -len(".fits")]
        kind = ("catalog", "error", "both", None)[i % 4]
        if kind in ("catalog", "both"):
            writes.append((stem + "_sep.fits", b"SIMPLE", {"sources": str(i), "attempt": "1"}))
        if kind in ("error", "both"):
            writes.append((stem + "_sep.error.json",
                           json.dumps({"reason": f"broken {ds}", "attempt": 1}).encode(), None))
        expected[ds] = {"both": "catalog"}.get(kind, kind)
    for ds in extra:
        writes.append((_key(ds)[: -len(".fits")] + "_sep.fits", b"SIMPLE", {"sources": "1"}))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda w: store.put_atomic(w[0], w[1], metadata=w[2]), writes))
    return expected


@pytest.fixture
def s3_url(aws: str) -> Iterator[tuple[str, S3FaultProxy]]:
    bucket = f"out-{uuid.uuid4().hex[:8]}"
    s3_client().create_bucket(Bucket=bucket)
    with S3FaultProxy(aws) as proxy:
        yield f"s3://{bucket}/mirror", proxy


def _kinds(found: dict[str, outputs.Result], datasets: list[str]) -> dict[str, str | None]:
    return {ds: (found[ds].kind if ds in found else None) for ds in datasets}


def test_shared_listings_answer_as_listing_alone_with_far_fewer_requests(
        s3_url: tuple[str, S3FaultProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    url, proxy = s3_url
    # In flight: every other dataset; the rest are older catalogs between them.
    in_flight, done = DATASETS[::2], DATASETS[1::2]
    expected = _fill(url, in_flight, extra=done)
    items = [(ds, _key(ds)) for ds in in_flight]
    reader = OutputStore(url)
    alone = {ds: r for ds, key in items if (r := reader.find(ds, key)) is not None}
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # count from here on
    shared = OutputStore(url).find_many(items)
    assert _kinds(shared, in_flight) == expected == _kinds(alone, in_flight)
    assert shared == alone  # the same figures and reasons, not only the same kinds
    assert shared[in_flight[0]].sources == 0 and shared[in_flight[1]].reason.startswith("broken")
    # One listing per program instead of one per dataset (54 in flight, 3 programs).
    assert proxy.counts["requests LIST"] == 3, proxy.counts


def test_a_range_too_sparse_for_its_budget_falls_back_to_listing_alone(
        s3_url: tuple[str, S3FaultProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    url, proxy = s3_url
    # Two in flight in one program with 1,100 done catalogs between them: the shared listing
    # may read one page (1,000 keys), which reaches the first and not the second.
    in_flight = ["ib1a00000", "ib1a99999"]
    between = [f"ib1a{n:05d}" for n in range(1, 1101)]
    expected = _fill(url, in_flight, extra=between)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    found = OutputStore(url).find_many([(ds, _key(ds)) for ds in in_flight])
    assert _kinds(found, in_flight) == expected == {"ib1a00000": "catalog", "ib1a99999": "error"}
    assert proxy.counts["requests LIST"] == 2, proxy.counts  # one shared page, then one alone


def test_stems_reached_by_a_cut_listing_are_answered_and_the_rest_listed_alone(
        s3_url: tuple[str, S3FaultProxy], monkeypatch: pytest.MonkeyPatch) -> None:
    url, _proxy = s3_url
    # A budget of a few keys: 18 in flight in one program, with done ones between them, hold
    # more keys than their 9 "pages" of 3.
    monkeypatch.setattr(outputs, "LIST_PAGE", 3)
    in_flight = DATASETS[0:36:2]
    expected = _fill(url, in_flight, extra=DATASETS[1:36:2])
    found = OutputStore(url).find_many([(ds, _key(ds)) for ds in in_flight])
    assert _kinds(found, in_flight) == expected


def test_a_directory_store_answers_the_same(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    in_flight = DATASETS[::3]
    expected = _fill(url, in_flight, extra=DATASETS[1::3])
    found = OutputStore(url).find_many([(ds, _key(ds)) for ds in in_flight])
    assert _kinds(found, in_flight) == expected
    assert OutputStore(url).find_many([]) == {}


@pytest.mark.parametrize("shared", [False, True])
def test_a_previous_generation_catalog_gives_way_to_this_generations_markers(
        tmp_path: Path, shared: bool) -> None:
    """A re-catalogued dataset's old catalog stays at its key until the new one replaces it;
    until then the reconciler must see this generation's skip or error marker, not the old
    catalog (which would hide a failure until it timed out)."""
    url = f"file://{tmp_path}"
    store = open_store(url)
    old, failing, skipped, replaced = "ib1a01001", "ib1a01002", "ib1a01003", "ib1a01004"
    for ds in (old, failing, skipped, replaced):
        # A directory store keeps no metadata: the reader takes it from the header.
        table = fits.BinTableHDU.from_columns([fits.Column("x", "E", array=[1.0, 2.0, 3.0])])
        table.header.update(ATTEMPT=4 if ds == replaced else 1, INETAG='"e1"', INSIZE=10)
        data = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(data)
        store.put_atomic(_key(ds)[: -len(".fits")] + "_sep.fits", data.getvalue())
    marker = {"reason": "no SCI", "attempt": 3, "retryable": False, "missing": False}
    store.put_atomic(_key(failing)[:-5] + "_sep.error.json", json.dumps(marker).encode())
    store.put_atomic(_key(skipped)[:-5] + "_sep.skipped.json",
                     json.dumps({"reason": "grism filter G141", "attempt": 3}).encode())
    items = [outputs.Pending(ds, _key(ds), 3) for ds in (old, failing, skipped, replaced)]
    found = OutputStore(url, shared_listing=shared).find_many(items)
    assert old not in found  # the old catalog alone: still waiting for this generation
    assert (found[failing].kind, found[failing].attempt) == ("error", 3)
    assert (found[skipped].kind, found[skipped].reason) == ("skipped", "grism filter G141")
    assert (found[replaced].kind, found[replaced].attempt) == ("catalog", 4)
    assert (found[replaced].input_etag, found[replaced].input_size) == ('"e1"', 10)
    # For a first generation the same old catalog is the result.
    first = OutputStore(url, shared_listing=shared).find_many([(old, _key(old))])
    assert first[old].kind == "catalog"


def test_reconcile_settles_page_by_page(tmp_path: Path) -> None:
    """A pass reads the datasets in flight a page at a time and settles every page."""
    from daemon.config import ExecutorSection
    from daemon.reconcile import reconcile
    from state.store import Discovered, StateStore

    datasets = DATASETS[:9]
    store = StateStore(tmp_path / "state.db")
    poll = store.begin_poll("poll", 60000.0)
    store.record_window(poll, 60001.0, [Discovered(d, _key(d), 60000.0, d) for d in datasets],
                        observations=9, products=9)
    store.claim_new(9, executor="lambda", run_id="r", now=0.0)
    url = f"file://{tmp_path}/out"
    expected = _fill(url, datasets)
    out = reconcile(store, OutputStore(url), ExecutorSection(max_attempts=1), now=1.0, page=2)
    kinds = list(expected.values())
    assert out.done == kinds.count("catalog")
    assert out.failed == kinds.count("error") and out.in_flight == kinds.count(None)
    assert {d: store.get(d)["state"] for d in datasets} == {
        d: {"catalog": "done", "error": "failed", None: "dispatched"}[k]
        for d, k in expected.items()}
    store.close()


def _catalog_file(attempt: int, etag: str) -> bytes:
    """A catalog whose extension header takes more than one read (INETAG early, ATTEMPT
    last, as lambda_sep.catalog writes them, with 150 cards between)."""
    table = fits.BinTableHDU.from_columns([fits.Column("x", "E", array=[1.0, 2.0])])
    table.header["INETAG"] = etag
    for i in range(150):
        table.header[f"FILL{i}"] = (i, "a card between the input and the run")
    table.header["ATTEMPT"] = attempt
    data = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(data)
    return data.getvalue()


def test_a_catalog_replaced_while_its_header_is_read_is_read_again_whole(
        tmp_path: Path) -> None:
    """On a store without metadata the reconciler reads a catalog's header in several ranged
    reads. A re-catalogue's new catalog renamed over the old one between two of them once
    gave the old run's INETAG with the new run's ATTEMPT, and the dataset was marked done
    with its old input ETag (test_freshness, under load). Now that pass finds no result,
    and the next one reads the new catalog whole."""
    url = f"file://{tmp_path}"
    ds = "ib1a01001"
    key = _key(ds)[: -len(".fits")] + "_sep.fits"
    writer = open_store(url)
    writer.put_atomic(key, _catalog_file(1, "old-input"))
    reads: list[tuple[int, int]] = []

    class Replaced(FileStore):
        """The handler's put_atomic of generation 2 lands after the first header read."""

        def read_range(self, k: str, start: int, stop: int, *, etag: str | None = None
                       ) -> bytes:
            reads.append((start, stop))
            data = super().read_range(k, start, stop, etag=etag)
            if len(reads) == 1:
                time.sleep(0.05)  # the file's mtime (in its ETag) moves by clock ticks
                writer.put_atomic(key, _catalog_file(2, "new-input"))
            return data

    store = OutputStore(url)
    store._store = Replaced(str(tmp_path))
    assert store.find(ds, _key(ds), 2) is None  # nothing mixed from two catalogs
    assert len(reads) == 2  # the header took two reads, the second saw the swap
    found = store.find(ds, _key(ds), 2)
    assert found is not None
    assert (found.kind, found.attempt, found.input_etag) == ("catalog", 2, "new-input")
