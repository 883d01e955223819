"""The daemon's one view of the output store: which dispatched datasets have a result.

For each dataset in flight it lists the two possible result keys (the catalog
``..._sep.fits`` and the error marker ``..._sep.error.json`` share the prefix ``..._sep``),
then reads the catalog's metadata or the marker. The work is proportional to the number in
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
from typing import Any

from lambda_sep import storage

CATALOG_SUFFIX = "_sep.fits"
ERROR_SUFFIX = "_sep.error.json"
# Keys in one ListObjectsV2 answer (S3's maximum, and its default).
LIST_PAGE = 1000


def catalog_key(input_key: str) -> str:
    """The catalog key of an input key (the output layout mirrors the archive's)."""
    return _stem(input_key) + CATALOG_SUFFIX


def error_key(input_key: str) -> str:
    """The error-marker key of an input key."""
    return _stem(input_key) + ERROR_SUFFIX


def _stem(input_key: str) -> str:
    if not input_key.endswith(".fits"):
        raise ValueError(f"input key does not end in .fits: {input_key!r}")
    return input_key[: -len(".fits")]


@dataclass(frozen=True)
class Result:
    """A result found in the output store for one dataset."""

    obs_id: str
    kind: str  # "catalog" or "error"
    key: str
    attempt: int | None = None
    sources: int | None = None
    duration_ms: int | None = None
    bytes_read: int | None = None
    peak_rss_mb: float | None = None
    reason: str | None = None
    retryable: bool = False


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

    def find(self, obs_id: str, input_key: str) -> Result | None:
        """The catalog (preferred) or error marker for one dataset, or None."""
        stem = _stem(input_key)
        return self._resolve(obs_id, stem, set(self._store.list(stem + "_sep")))

    def _resolve(self, obs_id: str, stem: str, keys: set[str]) -> Result | None:
        cat, err = stem + CATALOG_SUFFIX, stem + ERROR_SUFFIX
        if cat in keys:
            return self._catalog(obs_id, cat)
        if err in keys:
            return self._marker(obs_id, err)
        return None

    def find_many(self, items: Sequence[tuple[str, str]]) -> dict[str, Result]:
        """``find`` for many (obs_id, input_key) pairs, concurrently; only those with a result."""
        if not items:
            return {}
        listed: dict[str, set[str]] = {}  # stem -> its keys, for stems a shared listing covered
        with ThreadPoolExecutor(max_workers=min(self._workers, len(items))) as pool:
            if self._shared_listing:
                for covered in pool.map(self._list_range, _by_directory(items)):
                    listed.update(covered)

            def one(item: tuple[str, str]) -> Result | None:
                stem = _stem(item[1])
                if stem in listed:
                    return self._resolve(item[0], stem, listed[stem])
                return self.find(*item)

            results = list(pool.map(one, items))
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
        current = next(pending)
        last_key = ""
        ended = True
        for n, key in enumerate(self._store.list(directory, start_after=stems[0]), 1):
            last_key = key
            while current is not None and key > current and not key.startswith(current):
                current = next(pending, None)  # past every key of ``current``
            if current is None:
                break
            if key.startswith(current + "_sep"):
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
        if _int(meta.get("sources")) is None:
            meta = self._header_metadata(key, info.size)
        return Result(obs_id=obs_id, kind="catalog", key=key, attempt=_int(meta.get("attempt")),
                      sources=_int(meta.get("sources")),
                      duration_ms=_int(meta.get("duration-ms")),
                      bytes_read=_int(meta.get("bytes-read")),
                      peak_rss_mb=_float(meta.get("peak-rss-mb")))

    def _header_metadata(self, key: str, size: int) -> dict[str, Any]:
        """The metadata S3 would carry, read from the catalog's own header blocks (for
        stores without object metadata, or catalogs written without it)."""
        from lambda_sep.fitsread import ImageError, read_headers

        try:
            headers = read_headers(self._store, key, size, 2)
        except ImageError:
            return {}  # not a whole catalog: counted as done, without figures
        if len(headers) < 2:
            return {}
        h = headers[1]
        proctime = h.get("PROCTIME")
        return {"sources": h.get("NAXIS2"), "attempt": h.get("ATTEMPT"),
                "duration-ms": round(proctime * 1000) if proctime is not None else None,
                "bytes-read": h.get("BYTESRD"), "peak-rss-mb": h.get("PEAKRSS")}

    def _marker(self, obs_id: str, key: str) -> Result | None:
        raw = self._store.get(key)
        if raw is None:
            return None
        try:
            body: dict[str, Any] = json.loads(raw)
            reason = str(body.get("reason") or "no reason given")
            attempt = _int(body.get("attempt"))
            retryable = bool(body.get("retryable", False))
        except (ValueError, AttributeError):
            reason, attempt, retryable = f"unreadable error marker at {key}", None, False
        return Result(obs_id=obs_id, kind="error", key=key, attempt=attempt, reason=reason,
                      retryable=retryable)

    def read(self, key: str) -> bytes | None:
        """The bytes of one object in the output store (``preview``, the index)."""
        return self._store.get(key)

    def catalog_keys(self) -> set[str]:
        """Every catalog key in the store (one listing: a LIST per 1,000 keys on S3)."""
        return {k for k in self._store.list("") if k.endswith(CATALOG_SUFFIX)}


def _by_directory(items: Sequence[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """Stems grouped by the archive directory above their dataset's (hst/public/<first 4>/),
    sorted; only directories with two datasets or more are worth a shared listing."""
    groups: dict[str, set[str]] = {}
    for _obs_id, input_key in items:
        stem = _stem(input_key)
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
