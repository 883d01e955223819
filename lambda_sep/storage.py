"""Object storage: the only lambda_sep module that touches S3 or the local file system store.

``open_store(url)`` returns an :class:`ObjectStore` for ``s3://bucket/prefix``,
``file:///abs/dir`` or a bare bucket name. Keys are relative to the store's root (the bucket,
the S3 prefix or the directory) and are validated before any I/O: absolute keys, ``..``,
backslashes, NUL and anything that is not plain printable ASCII are refused with
``ValueError``. The daemon reads the output store through this same module.

Failures of the storage itself raise :class:`StorageError`; its ``retryable`` attribute is
true only for transient trouble (throttling, 5xx, timeouts and dropped connections that
outlived botocore's own ``standard``-mode retries).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import botocore
import botocore.config
import botocore.exceptions
from botocore.config import Config

from lambda_sep.contract import BUCKET_RE

__all__ = [
    "FileStore",
    "ObjectChanged",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StorageError",
    "new_s3_client",
    "open_store",
    "s3_client",
    "validate_key",
]

# S3's own limit on key length (bytes; our keys are ASCII so characters == bytes).
MAX_KEY_LENGTH = 1024
_META_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Temporary files written by FileStore.put_atomic; list() never shows them.
_TMP_RE = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")

# Retries: botocore's "standard" mode retries throttling (SlowDown, 503), transient 5xx and
# dropped connections with exponential backoff and a retry quota. Timeouts are short enough
# that a stuck connection is retried well inside a Lambda's run time.
S3_CONFIG = Config(
    retries={"mode": "standard", "total_max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
    tcp_keepalive=True,
    # The daemon's reconcile lists with 32 threads on the shared client (daemon.outputs);
    # the function needs PART_THREADS plus its reader and writer. Connections open on use.
    max_pool_connections=32,
)
# A GET whose body is cut off after the headers arrived is re-issued this many times in all.
BODY_READ_ATTEMPTS = 3
# A ranged read longer than this is fetched in parts of this size on parallel connections:
# S3 serves each connection at tens of MB/s, and AWS's performance guidelines recommend
# concurrent byte-range GETs for throughput ("Use Byte-Range Fetches"). The parts of one
# exposure's pixels come in at the time of one.
PART_BYTES = 2 * 1024 * 1024
PART_THREADS = 8

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "500",
        "502",
        "503",
        "504",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
# OSError numbers worth another attempt (NFS hiccups, interrupted or would-block calls).
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE})


class StorageError(Exception):
    """The storage failed. ``retryable`` is true only for transient trouble; ``status`` is
    the HTTP status S3 answered with, when it answered (403: access denied, for example)."""

    def __init__(self, message: str, *, retryable: bool = False,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class ObjectNotFound(StorageError):
    """The object does not exist (raised by ``read_range``; ``head``/``get`` return None)."""


class ObjectChanged(StorageError):
    """The object is no longer the version whose ETag a read gave (``read_range(...,
    etag=)``): it was overwritten between two reads of one file. Retryable: reading again
    from the start gets one version whole."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True, status=412)


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells: size in bytes, entity tag, user metadata (lower-case names)."""

    size: int
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)


def validate_key(key: str, *, allow_empty: bool = False) -> str:
    """Return ``key`` unchanged if it is a safe relative key, else raise ``ValueError``.

    Refused: non-strings, empty keys (unless ``allow_empty``, for list prefixes), keys over
    1024 characters, absolute keys, ``..`` anywhere, backslashes, NUL, empty path segments and
    any character outside printable ASCII (0x20-0x7e). This runs before any I/O so a hostile
    key can never reach S3 or the file system.
    """
    if not isinstance(key, str):
        raise ValueError(f"object key must be a string, not {type(key).__name__}")
    if not key:
        if allow_empty:
            return key
        raise ValueError("object key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key is longer than {MAX_KEY_LENGTH} characters")
    if "\x00" in key:
        raise ValueError("object key contains a NUL character")
    if not all(" " <= ch <= "~" for ch in key):
        raise ValueError(f"object key is not plain printable ASCII: {key!r}")
    if key.startswith("/"):
        raise ValueError(f"object key is absolute: {key!r}")
    if "\\" in key:
        raise ValueError(f"object key contains a backslash: {key!r}")
    if ".." in key:
        raise ValueError(f"object key contains '..': {key!r}")
    # An empty segment ("a//b") maps ambiguously onto a directory; a trailing "/" is fine
    # for a list prefix only.
    body = key[:-1] if (allow_empty and key.endswith("/")) else key
    if "" in body.split("/"):
        raise ValueError(f"object key has an empty path segment: {key!r}")
    return key


def _validate_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """S3 user metadata travels in HTTP headers: names [a-z0-9-], values printable ASCII."""
    out: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not isinstance(name, str) or not _META_NAME_RE.match(name):
            raise ValueError(f"metadata name must match [a-z0-9][a-z0-9-]*: {name!r}")
        if not isinstance(value, str) or not all(" " <= ch <= "~" for ch in value):
            raise ValueError(f"metadata value for {name!r} must be printable ASCII text")
        out[name] = value
    return out


class ObjectStore(ABC):
    """A flat key space of immutable-until-overwritten objects (S3 semantics)."""

    url: str

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, ETag and user metadata of ``key``, or None if it does not exist."""

    @abstractmethod
    def read_range(self, key: str, start: int, stop: int, *, etag: str | None = None
                   ) -> bytes:
        """Bytes ``[start, stop)`` of ``key``; shorter if the object ends before ``stop``.

        Raises :class:`ObjectNotFound` if the object does not exist, and
        :class:`ObjectChanged` if ``etag`` is given and the object is another version now
        (a file read in several ranges must not mix two versions of it).
        """

    def read_head(self, key: str, stop: int) -> tuple[bytes, ObjectInfo] | None:
        """The first ``stop`` bytes of ``key`` (all of it if shorter) and what ``head``
        tells of it, or None if it does not exist. S3 answers both with one ranged GET."""
        info = self.head(key)
        if info is None:
            return None
        try:
            return self.read_range(key, 0, min(stop, info.size), etag=info.etag), info
        except ObjectNotFound:  # deleted between the two calls
            return None

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The whole object, or None if it does not exist."""

    @abstractmethod
    def put_atomic(
        self,
        key: str,
        data: bytes,
        *,
        metadata: dict[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write ``data`` at ``key`` so that readers see the old object or the new one whole."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing object is not an error."""

    @abstractmethod
    def list(self, prefix: str, *, start_after: str = "") -> Iterator[str]:
        """Keys (relative to the store root) starting with ``prefix``, in lexical order;
        only those after ``start_after`` when it is given."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _check_range(start: int, stop: int) -> None:
    if not (isinstance(start, int) and isinstance(stop, int)) or start < 0 or stop < start:
        raise ValueError(f"invalid byte range [{start}, {stop})")


# --------------------------------------------------------------------------------------
# S3


_client_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def s3_client(*, anonymous: bool = False) -> Any:
    """The process-wide S3 client (created on first use, then reused by warm invocations);
    ``anonymous``: one that signs nothing, whatever credentials the process has.

    One client per process and per endpoint/region environment: a forked worker gets its
    own (connection pools must not be shared across fork), and tests that point
    ``AWS_ENDPOINT_URL`` at a fresh local server get a client for it.
    """
    env = os.environ
    cache_key = (
        os.getpid(),
        env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        None if anonymous else env.get("AWS_ACCESS_KEY_ID"),
        anonymous,
    )
    client = _clients.get(cache_key)
    if client is None:
        with _client_lock:
            client = _clients.get(cache_key)
            if client is None:
                # A Session per client keeps creation thread-safe; the endpoint and
                # credentials come from the standard AWS configuration. Unsigned when asked
                # (the public archive: signing with a role that has no rights on stpubdata
                # is refused with AccessDenied, while anonymous reads work), and when there
                # are no credentials at all (anything private then fails clearly).
                session = boto3.session.Session()
                client = new_s3_client(
                    anonymous=anonymous or session.get_credentials() is None, session=session)
                _clients[cache_key] = client
    return client


_part_pool_lock = threading.Lock()
_part_pools: dict[int, ThreadPoolExecutor] = {}


def _part_pool() -> ThreadPoolExecutor:
    """The process's threads for the parts of big reads (made on first use, per process)."""
    with _part_pool_lock:
        pool = _part_pools.get(os.getpid())
        if pool is None:
            pool = _part_pools[os.getpid()] = ThreadPoolExecutor(
                PART_THREADS, thread_name_prefix="s3-part")
        return pool


def new_s3_client(*, anonymous: bool, max_pool_connections: int | None = None,
                  session: Any = None) -> Any:
    """An S3 client of the caller's own (``S3_CONFIG``'s retries and timeouts), unsigned
    when ``anonymous``; ``max_pool_connections`` for a caller with that many threads."""
    config = S3_CONFIG
    if anonymous:
        config = config.merge(botocore.config.Config(signature_version=botocore.UNSIGNED))
    if max_pool_connections is not None:
        config = config.merge(botocore.config.Config(max_pool_connections=max_pool_connections))
    return (session or boto3.session.Session()).client("s3", config=config)


def _s3_error(exc: Exception, where: str) -> StorageError:
    """Translate a botocore failure into a StorageError with the right ``retryable``."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        retryable = code in _TRANSIENT_CODES or status >= 500 or status == 429
        msg = err.get("Message") or code
        # Both the code and the HTTP status: a HEAD's error has no body, so no code, and a
        # GET's AccessDenied should read as the 403 it is.
        what = f"{code} (HTTP {status})" if code and status and code != str(status) else \
            code or str(status)
        return StorageError(f"{where}: {what}: {msg}", retryable=retryable,
                            status=status or None)
    transient = (
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        botocore.exceptions.IncompleteReadError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient):
        return StorageError(f"{where}: {type(exc).__name__}: {exc}", retryable=True)
    return StorageError(f"{where}: {type(exc).__name__}: {exc}", retryable=False)


def _client_error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(ObjectStore):
    """An S3 bucket, optionally below a key prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None,
                 anonymous: bool = False) -> None:
        if not BUCKET_RE.match(bucket):
            raise ValueError(f"invalid S3 bucket name: {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self._client = client
        self.anonymous = anonymous
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    @property
    def client(self) -> Any:
        """The explicit client, or the shared per-process one (unsigned if anonymous)."""
        return self._client if self._client is not None else s3_client(anonymous=self.anonymous)

    def _key(self, key: str, *, allow_empty: bool = False) -> str:
        validate_key(key, allow_empty=allow_empty)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    def head(self, key: str) -> ObjectInfo | None:
        """HEAD the object: size, ETag (without quotes) and user metadata."""
        k = self._key(key)
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=k)
        except botocore.exceptions.ClientError as exc:
            if _client_error_code(exc) in _NOT_FOUND_CODES:
                return None
            raise _s3_error(exc, self._where(k)) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, self._where(k)) from exc
        return ObjectInfo(
            size=int(resp["ContentLength"]),
            etag=str(resp.get("ETag", "")).strip('"'),
            metadata=dict(resp.get("Metadata") or {}),
        )

    @staticmethod
    def _read_body(get: Callable[[], Any]) -> tuple[Any, bytes]:
        """Run a GET and read its body, again if the connection drops mid-body; return the
        response and the body.

        botocore retries a request until its response headers arrive; a body cut short
        after that (ResponseStreamingError) is ours to retry. GETs are idempotent.
        """
        for attempt in range(BODY_READ_ATTEMPTS):
            resp = get()
            try:
                return resp, bytes(resp["Body"].read())
            except botocore.exceptions.ResponseStreamingError:
                if attempt == BODY_READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def read_range(self, key: str, start: int, stop: int, *, etag: str | None = None
                   ) -> bytes:
        """Ranged GET of ``[start, stop)``; in parallel parts of ``PART_BYTES`` when longer.
        With ``etag``, each GET carries If-Match: S3 answers 412 for another version."""
        k = self._key(key)
        _check_range(start, stop)
        if stop - start <= PART_BYTES:
            return self._get_range(k, start, stop, etag)[1]
        bounds = [(a, min(a + PART_BYTES, stop)) for a in range(start, stop, PART_BYTES)]
        # A part past the end comes back short or empty: the caller sees a short read.
        return b"".join(_part_pool().map(lambda b: self._get_range(k, b[0], b[1], etag)[1], bounds))

    def _get_range(self, k: str, start: int, stop: int, etag: str | None = None
                   ) -> tuple[Any, bytes]:
        """A ranged GET's response and body; (None, b"") when nothing is asked for or the
        range starts at or past the end of the object. ObjectNotFound if there is none,
        ObjectChanged if ``etag`` is not the object's any more."""
        if stop == start:
            return None, b""
        match = {"IfMatch": f'"{etag}"'} if etag else {}
        try:
            return self._read_body(lambda: self.client.get_object(
                Bucket=self.bucket, Key=k, Range=f"bytes={start}-{stop - 1}", **match))
        except botocore.exceptions.ClientError as exc:
            code = _client_error_code(exc)
            if code in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"{self._where(k)}: no such object") from exc
            if code == "InvalidRange":
                return None, b""
            if code in ("PreconditionFailed", "412"):
                raise ObjectChanged(f"{self._where(k)}: changed while being read (ETag "
                                    f"{etag} is not the object's any more)") from exc
            raise _s3_error(exc, self._where(k)) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, self._where(k)) from exc

    def read_head(self, key: str, stop: int) -> tuple[bytes, ObjectInfo] | None:
        """One ranged GET of ``[0, stop)``: its Content-Range tells the object's size, its
        ETag and metadata are the object's, so no HEAD is needed before reading."""
        k = self._key(key)
        _check_range(0, stop)
        try:
            resp, body = self._get_range(k, 0, stop)
        except ObjectNotFound:
            return None
        if resp is None:  # nothing asked for, or an empty object (it has no byte 0)
            return (b"", info) if (info := self.head(key)) is not None else None
        # "bytes 0-65535/16496640"; a server that ignores Range sends the whole object.
        total = str(resp.get("ContentRange") or "").rpartition("/")[2]
        size = int(total) if total.isdigit() else int(resp.get("ContentLength") or len(body))
        return body, ObjectInfo(size=size, etag=str(resp.get("ETag", "")).strip('"'),
                                metadata=dict(resp.get("Metadata") or {}))

    def get(self, key: str) -> bytes | None:
        """GET the whole object."""
        k = self._key(key)
        try:
            return self._read_body(lambda: self.client.get_object(Bucket=self.bucket, Key=k))[1]
        except botocore.exceptions.ClientError as exc:
            if _client_error_code(exc) in _NOT_FOUND_CODES:
                return None
            raise _s3_error(exc, self._where(k)) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, self._where(k)) from exc

    def put_atomic(
        self,
        key: str,
        data: bytes,
        *,
        metadata: dict[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """One PUT: S3 makes an object visible whole or not at all.

        Content-MD5 makes S3 reject a body damaged in transit instead of storing it.
        """
        k = self._key(key)
        meta = _validate_metadata(metadata)
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=k,
                Body=bytes(data),
                Metadata=meta,
                ContentType=content_type,
                ContentMD5=md5,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, self._where(k)) from exc

    def delete(self, key: str) -> None:
        """DELETE (S3 answers 204 for a missing key too)."""
        k = self._key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=k)
        except botocore.exceptions.ClientError as exc:
            if _client_error_code(exc) in _NOT_FOUND_CODES:
                return
            raise _s3_error(exc, self._where(k)) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, self._where(k)) from exc

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[str]:
        """ListObjectsV2 under ``prefix``, paginated (1,000 keys a request, fetched as the
        caller reads); keys relative to the store root."""
        full = self._key(prefix, allow_empty=True)
        if self.prefix and not prefix:
            full = self.prefix + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        extra = {"StartAfter": self._key(start_after)} if start_after else {}
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full, **extra):
                for obj in page.get("Contents", ()):
                    yield obj["Key"][strip:]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, self._where(full)) from exc


# --------------------------------------------------------------------------------------
# Local directory


def _os_error(exc: OSError, where: str) -> StorageError:
    return StorageError(
        f"{where}: {exc.strerror or exc}", retryable=exc.errno in _TRANSIENT_ERRNOS
    )


def _file_etag(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


class FileStore(ObjectStore):
    """A local directory laid out like a bucket (tests, local mirrors, the default output).

    The ETag is ``<mtime_ns hex>-<size hex>``, like the ETags web servers derive for files:
    it changes whenever the file is rewritten, and costs no read of the content. The
    file system keeps no user metadata, so ``head`` returns an empty ``metadata``.
    """

    def __init__(self, root: str) -> None:
        if not os.path.isabs(root):
            raise ValueError(f"file store root must be an absolute path: {root!r}")
        self.root = os.path.normpath(root)
        self.url = "file://" + self.root

    def _path(self, key: str) -> str:
        validate_key(key)
        path = os.path.join(self.root, *key.split("/"))
        # A symlink inside the store must not lead writes or reads outside it.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise ValueError(f"object key resolves outside the store: {key!r}")
        return path

    def head(self, key: str) -> ObjectInfo | None:
        """stat() the file: size and an mtime/size ETag."""
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _os_error(exc, path) from exc
        if not os.path.isfile(path):
            return None
        return ObjectInfo(size=st.st_size, etag=_file_etag(st))

    def read_range(self, key: str, start: int, stop: int, *, etag: str | None = None
                   ) -> bytes:
        """pread() of ``[start, stop)``; with ``etag``, of that version of the file only."""
        path = self._path(key)
        _check_range(start, stop)
        try:
            with open(path, "rb") as fh:
                # The open file is one version whatever renames follow: check that one.
                if etag is not None and (now := _file_etag(os.fstat(fh.fileno()))) != etag:
                    raise ObjectChanged(f"{path}: changed while being read (ETag {etag}, "
                                        f"now {now})")
                fh.seek(start)
                return fh.read(stop - start)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"{path}: no such object") from exc
        except OSError as exc:
            raise _os_error(exc, path) from exc

    def get(self, key: str) -> bytes | None:
        """Read the whole file."""
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise _os_error(exc, path) from exc

    def put_atomic(
        self,
        key: str,
        data: bytes,
        *,
        metadata: dict[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write a hidden temporary file beside the key, fsync it, rename it over the key.

        ``rename`` within one directory is atomic on POSIX, so a reader sees the old file or
        the new one whole, never a partial write, even if this process dies mid-write.
        ``metadata`` is validated like S3's and then dropped: the file system keeps none.
        """
        path = self._path(key)
        _validate_metadata(metadata)
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            # Persist the rename itself (the directory entry) before reporting success.
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise _os_error(exc, path) from exc
            raise

    def delete(self, key: str) -> None:
        """unlink(); a missing file is fine."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(exc, path) from exc

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[str]:
        """Walk the directory holding ``prefix``; skip put_atomic's temporary files."""
        validate_key(prefix, allow_empty=True)
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = os.path.join(self.root, *head.split("/")) if head else self.root
        keys: list[str] = []
        try:
            for dirpath, _dirnames, filenames in os.walk(base):
                rel_dir = os.path.relpath(dirpath, self.root)
                rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
                for fname in filenames:
                    if _TMP_RE.match(fname):
                        continue
                    rel = rel_dir + fname
                    if rel.startswith(prefix) and rel > start_after:
                        keys.append(rel)
        except OSError as exc:
            raise _os_error(exc, base) from exc
        # S3 lists in lexical key order; do the same so callers see one behaviour.
        yield from sorted(keys)


# --------------------------------------------------------------------------------------


def open_store(url: str, *, client: Any = None, anonymous: bool = False) -> ObjectStore:
    """Open ``s3://bucket[/prefix]``, ``file:///abs/dir`` or a bare bucket name.

    ``client`` overrides the shared boto3 S3 client (tests, custom sessions); ``anonymous``
    reads S3 unsigned (the public archive; a directory ignores it). Raises
    ``ValueError`` for anything else (relative paths, ``..``, hosts in file URLs, queries).
    """
    if not isinstance(url, str) or not url:
        raise ValueError("store URL must be a non-empty string")
    if url.startswith("s3://"):
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if any(ch in rest for ch in "?#"):
            raise ValueError(f"S3 URL must not carry a query or fragment: {url!r}")
        return S3Store(bucket, prefix, client=client, anonymous=anonymous)
    if url.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file URL must not name a host: {url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"file URL must not carry a query or fragment: {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ValueError(f"file URL must hold an absolute path: {url!r}")
        if "\x00" in path or ".." in path.split("/"):
            raise ValueError(f"file URL path must be normalised (no '..'): {url!r}")
        return FileStore(path)
    if BUCKET_RE.match(url):
        return S3Store(url, client=client, anonymous=anonymous)
    raise ValueError(f"not a store URL (s3://bucket/prefix, file:///abs/dir or a bucket): {url!r}")
