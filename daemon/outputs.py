"""The daemon's one view of the output store: which dispatched datasets have a result.

For each dataset in flight it lists the possible result keys (the catalog ``..._sep.fits``,
the skip marker ``..._sep.skipped.json`` and the error marker ``..._sep.error.json`` share the
prefix ``..._sep``), then reads the catalog's metadata or the marker. The keys and the
metadata names are ``lambda_sep.contract``'s. The work is proportional to the number in
flight, never to the number of catalogs already in the store.

On S3 a LIST costs as much as a PUT, so one LIST per dataset in flight would cost about as
much as writing the catalogs. Datasets are dispatched in MAST's order, a visit's exposures
together, and their keys sit side by side under ``hst/public/<first 4>/``: one listing from
the first of them to the last answers for all. It stops early where the range holds more
keys than it saves requests (a program's older catalogs between two in-flight datasets);
the datasets it did not reach are listed one by one, so the requests never grow with the
number done, and a shared listing never costs more than half a LIST per dataset above the
one-by-one cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from lambda_sep import contract, storage
from lambda_sep.contract import input_stem
from lambda_sep.storage import ObjectChanged, ObjectInfo

# Keys in one ListObjectsV2 answer (S3's maximum, and its default).
LIST_PAGE = 1000


class Pending(NamedTuple):
    """A dataset in flight: its input key, and the first dispatch of its generation (a
    catalog written before it is the previous generation's, still at the key)."""

    obs_id: str
    input_key: str
    min_dispatch: int = 1


@dataclass(frozen=True)
class Result:
    """A result found in the output store for one dataset."""

    obs_id: str
    kind: str  # "catalog", "error" or "skipped"
    key: str
    attempt: int | None = None
    sources: int | None = None
    duration_ms: int | None = None
    bytes_read: int | None = None
    peak_rss_mb: float | None = None
    reason: str | None = None
    retryable: bool = False
    missing: bool = False  # an error marker saying the input is not in the archive (yet)
    input_etag: str | None = None
    input_size: int | None = None

    def current(self, min_dispatch: int) -> bool:
        """Written by a dispatch of the generation that starts at ``min_dispatch`` (a result
        that does not say which dispatch wrote it counts for a first generation only)."""
        return self.attempt >= min_dispatch if self.attempt is not None else min_dispatch <= 1


class OutputStore:
    """Reads results from ``output.url`` (a directory, file:// or s3://)."""

    def __init__(self, url: str, *, workers: int = 32, shared_listing: bool | None = None
                 ) -> None:
        """``shared_listing``: let datasets in flight share LIST requests (see the module);
        by default on S3 only, since a directory listing costs nothing and a program's
        directory can be large."""
        self.url = url
        self._store = storage.open_store(url)
        s3 = url.startswith("s3://")
        # Threads hide network latency (S3) and disk waits (a directory: fewer suffice).
        self._workers = workers if s3 else min(workers, 8)
        self._shared_listing = s3 if shared_listing is None else shared_listing

    def find(self, obs_id: str, input_key: str, min_dispatch: int = 1) -> Result | None:
        """This generation's result for one dataset, or None: its catalog (preferred), its
        skip marker, or an error marker (whose dispatch the reconciler checks)."""
        stem = input_stem(input_key)
        return self._resolve(Pending(obs_id, input_key, min_dispatch),
                             set(self._store.list(stem + contract.RESULTS_INFIX)))

    def _resolve(self, item: Pending, keys: set[str]) -> Result | None:
        stem = input_stem(item.input_key)
        cat, skip, err = (stem + contract.CATALOG_SUFFIX, stem + contract.SKIPPED_SUFFIX,
                          stem + contract.ERROR_SUFFIX)
        if cat in keys:
            found = self._catalog(item.obs_id, cat)
            if found is not None and found.current(item.min_dispatch):
                return found
        if skip in keys:
            found = self._marker(item.obs_id, skip, "skipped")
            if found is not None and found.current(item.min_dispatch):
                return found
        if err in keys:
            return self._marker(item.obs_id, err, "error")
        return None

    def find_many(self, items: Sequence[Pending | tuple[str, str]]) -> dict[str, Result]:
        """``find`` for many datasets in flight, concurrently; only those with a result."""
        if not items:
            return {}
        pending = [Pending(*item) for item in items]
        listed: dict[str, set[str]] = {}  # stem -> its keys, for stems a shared listing covered
        with ThreadPoolExecutor(max_workers=min(self._workers, len(pending))) as pool:
            if self._shared_listing:
                for covered in pool.map(self._list_range, _by_directory(pending)):
                    listed.update(covered)

            def one(item: Pending) -> Result | None:
                stem = input_stem(item.input_key)
                if stem in listed:
                    return self._resolve(item, listed[stem])
                return self.find(*item)

            results = list(pool.map(one, pending))
        return {r.obs_id: r for r in results if r is not None}

    def _list_range(self, group: tuple[str, list[str]]) -> dict[str, set[str]]:
        """List ``directory`` from the first stem to the last; the keys of each stem reached.

        Reads at most ``len(stems) // 2`` pages: past that, listing the rest one by one is
        cheaper, and the stems not reached are left out (their caller lists them alone).
        """
        directory, stems = group
        budget = max(1, len(stems) // 2) * LIST_PAGE
        keys: dict[str, set[str]] = {stem: set() for stem in stems}
        pending = iter(stems)  # sorted: each key belongs to the current stem or a later one
        current: str | None = next(pending)
        last_key = ""
        ended = True
        for n, key in enumerate(self._store.list(directory, start_after=stems[0]), 1):
            last_key = key
            while current is not None and key > current and not key.startswith(current):
                current = next(pending, None)  # past every key of ``current``
            if current is None:
                break
            if key.startswith(current + contract.RESULTS_INFIX):
                keys[current].add(key)
            if n == budget:  # stop before the generator asks for another page
                ended = False
                break
        # A stem is answered if the listing ended, or went past all of its keys.
        return {stem: found for stem, found in keys.items()
                if ended or (last_key > stem and not last_key.startswith(stem))}

    def _catalog(self, obs_id: str, key: str) -> Result | None:
        info = self._store.head(key)
        if info is None:  # deleted between list and head
            return None
        meta: dict[str, Any] = {k.lower(): v for k, v in info.metadata.items()}
        if _int(meta.get(contract.META_SOURCES)) is None:
            try:
                meta = self._header_metadata(key, info)
            except ObjectChanged:  # replaced while its header was read: the next pass
                return None  # reads the new one whole

        return Result(obs_id=obs_id, kind="catalog", key=key,
                      attempt=_int(meta.get(contract.META_ATTEMPT)),
                      sources=_int(meta.get(contract.META_SOURCES)),
                      duration_ms=_int(meta.get(contract.META_DURATION_MS)),
                      bytes_read=_int(meta.get(contract.META_BYTES_READ)),
                      peak_rss_mb=_float(meta.get(contract.META_PEAK_RSS_MB)),
                      input_etag=meta.get(contract.META_INPUT_ETAG) or None,
                      input_size=_int(meta.get(contract.META_INPUT_SIZE)))

    def _header_metadata(self, key: str, info: ObjectInfo) -> dict[str, Any]:
        """The metadata S3 would carry, read from the catalog's own header blocks (for
        stores without object metadata, or catalogs written without it), all of them from
        the version ``info`` describes (ObjectChanged if it was replaced meanwhile)."""
        from lambda_sep.fitsread import ImageError, read_headers

        try:
            headers = read_headers(self._store, key, info.size, 2, etag=info.etag or None)
        except ImageError:
            return {}  # not a whole catalog: counted as done, without figures
        if len(headers) < 2:
            return {}
        h = headers[1]
        proctime = h.get(contract.HDR_PROCTIME)
        return {
            contract.META_SOURCES: h.get(contract.HDR_SOURCES),
            contract.META_ATTEMPT: h.get(contract.HDR_ATTEMPT),
            contract.META_DURATION_MS: round(proctime * 1000) if proctime is not None else None,
            contract.META_BYTES_READ: h.get(contract.HDR_BYTES_READ),
            contract.META_PEAK_RSS_MB: h.get(contract.HDR_PEAK_RSS),
            contract.META_INPUT_ETAG: h.get(contract.HDR_INPUT_ETAG),
            contract.META_INPUT_SIZE: h.get(contract.HDR_INPUT_SIZE),
        }

    def _marker(self, obs_id: str, key: str, kind: str) -> Result | None:
        """An error or skip marker (JSON written by the handler)."""
        raw = self._store.get(key)
        if raw is None:
            return None
        try:
            body: dict[str, Any] = json.loads(raw)
            reason = str(body.get("reason") or "no reason given")
            attempt = _int(body.get("attempt"))
            retryable = bool(body.get("retryable", False))
            missing = bool(body.get("missing", False))
            etag = body.get("input_etag") or None
        except (ValueError, AttributeError):
            reason, attempt, retryable, missing, etag = (
                f"unreadable {kind} marker at {key}", None, False, False, None)
        return Result(obs_id=obs_id, kind=kind, key=key, attempt=attempt, reason=reason,
                      retryable=retryable, missing=missing, input_etag=etag)

    def read(self, key: str) -> bytes | None:
        """The bytes of one object in the output store (``preview``, the index)."""
        return self._store.get(key)

    def catalog_keys(self) -> set[str]:
        """Every catalog key in the store (one listing: a LIST per 1,000 keys on S3)."""
        return {k for k in self._store.list("") if k.endswith(contract.CATALOG_SUFFIX)}


def _by_directory(items: Sequence[Pending]) -> list[tuple[str, list[str]]]:
    """Stems grouped by the archive directory above their dataset's (hst/public/<first 4>/),
    sorted; only directories with two datasets or more are worth a shared listing."""
    groups: dict[str, set[str]] = {}
    for item in items:
        stem = input_stem(item.input_key)
        parts = stem.rsplit("/", 2)
        if len(parts) == 3:
            groups.setdefault(parts[0] + "/", set()).add(stem)
    return [(d, sorted(stems)) for d, stems in sorted(groups.items()) if len(stems) >= 2]


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
