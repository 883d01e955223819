"""The daemon's one view of the output store: which dispatched datasets have a result.

For each dataset in flight it lists the two possible result keys with one request (the
catalog ``..._sep.fits`` and the error marker ``..._sep.error.json`` share the prefix
``..._sep``), then reads the catalog's metadata or the marker. The work is proportional to
the number in flight, never to the number of catalogs already in the store.
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

    def __init__(self, url: str, *, workers: int = 32) -> None:
        self.url = url
        self._store = storage.open_store(url)
        # Threads hide network latency (S3) and disk waits (a directory: fewer suffice).
        self._workers = workers if url.startswith("s3://") else min(workers, 8)

    def find(self, obs_id: str, input_key: str) -> Result | None:
        """The catalog (preferred) or error marker for one dataset, or None."""
        stem = _stem(input_key)
        keys = set(self._store.list(stem + "_sep"))
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
        with ThreadPoolExecutor(max_workers=min(self._workers, len(items))) as pool:
            results = list(pool.map(lambda it: self.find(*it), items))
        return {r.obs_id: r for r in results if r is not None}

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
        """The bytes of one object in the output store (for ``preview``)."""
        return self._store.get(key)


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
