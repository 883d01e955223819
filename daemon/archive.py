"""The daemon's one view of the archive bucket: is each catalogued input still there, and is
it still the object that was catalogued (its ETag and size)?

One HEAD request per input, many at once on a thread pool, unsigned when ``[archive]
anonymous`` is true (the public bucket reads anonymously, so a refresh never depends on the
rights of whatever AWS account the daemon runs under).

What a missing key answers depends on the reader's rights (Amazon S3 API reference,
HeadObject, "Permissions"): with ``s3:ListBucket`` on the bucket S3 answers 404, without it
403, the same as for an object one may not read. The public archive lets anyone list it
(astroquery's ``mast/cloud.py`` lists it unsigned and reads a HEAD's 404 as "not on S3"), so
a 404 means gone. A 403 alone cannot tell a missing key from a forbidden one: the input
is then looked for with a LIST of its own key as prefix (listing rights are all that
question needs); if the listing answers and the key is not in it, the input is gone; if
the listing is refused too, nothing is concluded and the input counts as not checked.

Requests are counted as S3 bills them (botocore's own retries included): a HEAD is a
GET-class request, a LIST a PUT-class one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from daemon.prices import cost_usd
from lambda_sep import storage

# HEADs in the air at once: each waits a round trip (tens of ms to S3), CPU is not the limit.
WORKERS = 32


class Probe(NamedTuple):
    """What the archive holds at one key.

    ``state``: "present" (``etag`` and ``size`` say which object), "gone", or "unknown"
    (``reason`` says why it could not be told). ``heads``/``lists``: requests it took.
    """

    key: str
    state: str
    etag: str | None = None
    size: int | None = None
    reason: str | None = None
    heads: int = 0
    lists: int = 0


@dataclass
class Requests:
    """Requests made to the archive bucket, and what S3 charges for them."""

    heads: int = 0
    lists: int = 0

    def add(self, other: Requests | Probe) -> None:
        """Count ``other``'s requests too."""
        self.heads += other.heads
        self.lists += other.lists

    @property
    def cost_usd(self) -> float:
        """Their price at S3 Standard's published request prices (us-east-1)."""
        return cost_usd(self.heads, self.lists)


class ArchiveBucket:
    """HEADs of input keys in ``[archive] bucket`` (an S3 bucket or a file:///abs/dir)."""

    def __init__(self, bucket: str, *, anonymous: bool = True, workers: int = WORKERS) -> None:
        self.bucket = bucket
        self.workers = workers
        self._anonymous = anonymous
        # Each probe runs on one thread; the requests botocore sends for it (its retries
        # too) are counted on that thread.
        self._sent = threading.local()
        self._store: storage.ObjectStore | None = None  # made on first use: start-up stays fast
        self._client: Any = None
        self._store_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archive-head")

    @property
    def store(self) -> storage.ObjectStore:
        """The archive as an object store (an S3 client of its own, or a directory)."""
        with self._store_lock:
            if self._store is None:
                if not self.bucket.startswith("file://"):
                    self._client = storage.new_s3_client(anonymous=self._anonymous,
                                                         max_pool_connections=self.workers)
                    self._client.meta.events.register("before-send.s3.HeadObject",
                                                      self._count("heads"))
                    self._client.meta.events.register("before-send.s3.ListObjectsV2",
                                                      self._count("lists"))
                self._store = storage.open_store(self.bucket, client=self._client)
            return self._store

    def _count(self, kind: str) -> Any:
        def hook(**_: Any) -> None:
            setattr(self._sent, kind, getattr(self._sent, kind, 0) + 1)
        return hook

    def close(self) -> None:
        """Let the probes asked for finish, then hang up the client's connections (a
        server keeps a thread for each one left open)."""
        self._pool.shutdown(wait=True)
        with self._store_lock:
            if self._client is not None:
                self._client.close()

    def probe(self, key: str) -> Probe:
        """HEAD one key (and LIST it when the HEAD is refused, see the module)."""
        self._sent.heads = self._sent.lists = 0
        return self._look(key)._replace(heads=self._sent.heads, lists=self._sent.lists)

    def _look(self, key: str) -> Probe:
        try:
            info = self.store.head(key)
        except storage.StorageError as exc:
            if exc.status != 403:
                return Probe(key, "unknown", reason=str(exc))
            return self._listed(key)
        except ValueError as exc:  # a key the storage layer refuses: never sent
            return Probe(key, "unknown", reason=str(exc))
        if info is None:
            return Probe(key, "gone")
        return Probe(key, "present", etag=info.etag, size=info.size)

    def _listed(self, key: str) -> Probe:
        try:
            found = any(k == key for k in self.store.list(key))
        except storage.StorageError as exc:
            return Probe(key, "unknown", reason="HEAD and LIST both refused (403): whether "
                                                f"the input exists cannot be told ({exc})")
        if found:
            return Probe(key, "unknown", reason="the input is listed but its HEAD is refused "
                                                "(403)")
        return Probe(key, "gone")

    def probe_many(self, keys: Iterable[str]) -> dict[str, Probe]:
        """``probe`` for many keys at once, ``workers`` requests in the air."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        if len(unique) == 1:
            return {unique[0]: self.probe(unique[0])}
        return {p.key: p for p in self._pool.map(self.probe, unique)}

