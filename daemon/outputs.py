"""The daemon's one view of the output store: which dispatched datasets have a result.

For each dataset in flight it lists the two possible result keys with one request (the
catalog ``..._sep.fits`` and the error marker ``..._sep.error.json`` share the prefix
``..._sep``), then reads the catalog's metadata or the marker. The work is proportional to
the number in flight, never to the number of catalogs already in the store.
"""

from __future__ import annotations

import io
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
        self._workers = workers

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
        found: dict[str, Result] = {}
        with ThreadPoolExecutor(max_workers=min(self._workers, len(items))) as pool:
            for res in pool.map(lambda it: self.find(*it), items):
                if res is not None:
                    found[res.obs_id] = res
        return found

    def _catalog(self, obs_id: str, key: str) -> Result | None:
        info = self._store.head(key)
        if info is None:  # deleted between list and head
            return None
        meta = {k.lower(): v for k, v in info.metadata.items()}
        if _int(meta.get("sources")) is None:
            meta = self._header_metadata(key)
            if meta is None:
                return None
        return Result(obs_id=obs_id, kind="catalog", key=key, attempt=_int(meta.get("attempt")),
                      sources=_int(meta.get("sources")),
                      duration_ms=_int(meta.get("duration-ms")),
                      bytes_read=_int(meta.get("bytes-read")),
                      peak_rss_mb=_float(meta.get("peak-rss-mb")))

    def _header_metadata(self, key: str) -> dict[str, Any] | None:
        """The metadata S3 would carry, read from the catalog's own header (for stores
        without object metadata, or catalogs written without it)."""
        from astropy.io import fits

        data = self._store.get(key)
        if data is None:
            return None
        with fits.open(io.BytesIO(data), lazy_load_hdus=True) as hdul:
            h = hdul[1].header
            proctime = h.get("PROCTIME")
            return {"sources": h.get("NAXIS2", 0), "attempt": h.get("ATTEMPT"),
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
