"""lambda_sep.storage: key validation, URL parsing, and the same ObjectStore contract on a
directory and on S3 (moto on loopback), including atomic writes and retry classification."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.retries.standard
import pytest
from botocore.config import Config

from lambda_sep import storage
from lambda_sep.storage import (
    FileStore,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    S3Store,
    StorageError,
    open_store,
    validate_key,
)

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "a/../b",
    "a/..",
    "a..b",
    "a\\b",
    "a\x00b",
    "caf\u00e9/x.fits",
    "tab\there",
    "line\nbreak",
    "a//b",
    "x" * 1025,
    "\u202eevil",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_validate_key_refuses(key: str) -> None:
    with pytest.raises(ValueError):
        validate_key(key)


@pytest.mark.parametrize("key", ["a", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits",
                                 "dir/with space/and-dash_under.x", "x" * 1024])
def test_validate_key_accepts(key: str) -> None:
    assert validate_key(key) == key


def test_validate_key_prefix_rules() -> None:
    assert validate_key("", allow_empty=True) == ""
    assert validate_key("hst/public/", allow_empty=True) == "hst/public/"
    with pytest.raises(ValueError):
        validate_key("hst/public/")  # a trailing slash is for list prefixes only
    with pytest.raises(ValueError):
        validate_key(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "cls", "norm"), [
    ("s3://bucket", S3Store, "s3://bucket"),
    ("s3://bucket/", S3Store, "s3://bucket"),
    ("s3://bucket/pre/fix/", S3Store, "s3://bucket/pre/fix"),
    ("stpubdata", S3Store, "s3://stpubdata"),
    ("file:///tmp/x/", FileStore, "file:///tmp/x"),
    ("file://localhost/tmp/x", FileStore, "file:///tmp/x"),
    ("file:///tmp/with%20space", FileStore, "file:///tmp/with space"),
])
def test_open_store_normalises(url: str, cls: type, norm: str) -> None:
    store = open_store(url)
    assert isinstance(store, cls)
    assert store.url == norm


@pytest.mark.parametrize("url", [
    "", "relative/dir", "/abs/dir", "file://host/tmp/x", "file:tmp/x", "file:///tmp/../etc",
    "s3://", "s3://Bad_Bucket", "s3://bucket/../x", "s3://bucket/a?b", "http://x/y",
    "file:///tmp/x?q=1", "ab",
])
def test_open_store_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url)


# ------------------------------------------------------------------ one contract, two stores


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests run against a directory and a moto bucket below a prefix."""
    if request.param == "file":
        return open_store(f"file://{tmp_path / 'root'}")
    bucket = request.getfixturevalue("bucket")
    return open_store(f"s3://{bucket}/some/prefix")


def test_roundtrip(store: ObjectStore) -> None:
    key = "hst/public/icxe/icxe15wwq/icxe15wwq_flt_sep.fits"
    assert store.head(key) is None
    assert store.get(key) is None
    data = bytes(range(256)) * 40
    store.put_atomic(key, data, metadata={"obs-id": "icxe15wwq", "sources": "12"})
    info = store.head(key)
    assert isinstance(info, ObjectInfo)
    assert info.size == len(data)
    assert info.etag
    assert store.get(key) == data
    assert store.read_range(key, 0, 10) == data[:10]
    assert store.read_range(key, 100, 356) == data[100:356]
    assert store.read_range(key, 5, 5) == b""
    # Past the end: what exists, as S3 does.
    assert store.read_range(key, len(data) - 4, len(data) + 100) == data[-4:]
    if isinstance(store, S3Store):
        assert info.metadata == {"obs-id": "icxe15wwq", "sources": "12"}
    else:
        assert info.metadata == {}  # a file system keeps no user metadata
    store.put_atomic(key, b"new")
    assert store.get(key) == b"new"
    assert store.head(key).etag != info.etag
    store.delete(key)
    assert store.head(key) is None
    store.delete(key)  # deleting a missing object is fine


def test_read_head_and_parallel_parts(store: ObjectStore, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    """read_head: the first bytes and the HEAD's answer at once; a long range on S3 comes in
    parts on parallel connections, the same bytes."""
    monkeypatch.setattr(storage, "PART_BYTES", 1000)
    key = "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"
    assert store.read_head(key, 100) is None
    data = os.urandom(4500)
    store.put_atomic(key, data)
    head, info = store.read_head(key, 100)  # type: ignore[misc]
    assert head == data[:100] and (info.size, info.etag) == (len(data), store.head(key).etag)
    assert store.read_head(key, 10_000)[0] == data  # type: ignore[index]
    ranges: list[str] = []
    if isinstance(store, S3Store):
        store.client.meta.events.register(
            "before-call.s3.GetObject", lambda params, **_: ranges.append(
                params["headers"]["Range"]), unique_id="parts-test")
    try:
        assert store.read_range(key, 100, 4400) == data[100:4400]
        assert store.read_range(key, 4000, 6000) == data[4000:]  # short, as S3 is
    finally:
        if isinstance(store, S3Store):
            store.client.meta.events.unregister("before-call.s3.GetObject",
                                                unique_id="parts-test")
    if isinstance(store, S3Store):
        assert sorted(ranges[:5]) == sorted(f"bytes={a}-{min(a + 1000, 4400) - 1}"
                                            for a in range(100, 4400, 1000))


def test_read_range_of_missing_object(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound):
        store.read_range("no/such/object.fits", 0, 10)


def test_list(store: ObjectStore) -> None:
    keys = ["a/b/c_sep.fits", "a/b/c_sep.error.json", "a/b/d_sep.fits", "a/bb/e.fits", "z.txt"]
    for k in keys:
        store.put_atomic(k, k.encode())
    assert list(store.list("a/b/c_sep")) == ["a/b/c_sep.error.json", "a/b/c_sep.fits"]
    assert list(store.list("a/b/")) == ["a/b/c_sep.error.json", "a/b/c_sep.fits",
                                        "a/b/d_sep.fits"]
    assert list(store.list("a/b")) == sorted(keys[:4])
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("nothing/")) == []
    with pytest.raises(ValueError):
        list(store.list("../"))


@pytest.mark.parametrize("key", BAD_KEYS[:-2])
def test_every_operation_validates_keys(store: ObjectStore, key: str) -> None:
    for op in (lambda: store.head(key), lambda: store.get(key),
               lambda: store.read_range(key, 0, 1), lambda: store.put_atomic(key, b"x"),
               lambda: store.delete(key)):
        with pytest.raises(ValueError):
            op()


@pytest.mark.parametrize("metadata", [{"Bad Name": "x"}, {"ok": "caf\u00e9"}, {"ok": 1}])
def test_metadata_is_validated_before_io(store: ObjectStore, metadata: dict) -> None:
    with pytest.raises(ValueError):
        store.put_atomic("k", b"x", metadata=metadata)
    assert store.head("k") is None


def test_invalid_range(store: ObjectStore) -> None:
    store.put_atomic("k", b"0123456789")
    for start, stop in ((-1, 3), (5, 4)):
        with pytest.raises(ValueError):
            store.read_range("k", start, stop)


# ----------------------------------------------------------------------------- file store


def test_file_store_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    store = open_store(f"file://{root}")
    with pytest.raises(ValueError, match="outside"):
        store.put_atomic("link/x.fits", b"x")
    assert list(outside.iterdir()) == []


def test_file_store_atomic_on_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(f"file://{tmp_path}")
    store.put_atomic("d/k.fits", b"old content")
    real_write = os.write
    calls = []

    def failing_write(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:1000])  # a partial write first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "write", failing_write)
    with pytest.raises(StorageError, match="No space"):
        store.put_atomic("d/k.fits", b"n" * 100_000)
    monkeypatch.undo()
    assert store.get("d/k.fits") == b"old content"  # the old object, whole
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["k.fits"]  # no temp left


def test_file_store_atomic_when_killed_mid_write(tmp_path: Path) -> None:
    """A process killed (SIGKILL) in the middle of put_atomic leaves the key absent or
    whole, never partial, and list() never shows its temporary file."""
    script = textwrap.dedent(f"""
        import os, signal
        from lambda_sep import storage
        real_write = os.write
        def write(fd, data):
            real_write(fd, bytes(data)[:4096])
            os.kill(os.getpid(), signal.SIGKILL)  # die with the temp file half written
        storage.os.write = write
        storage.open_store("file://{tmp_path}").put_atomic("a/k.fits", b"x" * 1_000_000)
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = open_store(f"file://{tmp_path}")
    assert store.head("a/k.fits") is None
    leftovers = list((tmp_path / "a").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".k.fits.tmp-")
    assert leftovers[0].stat().st_size == 4096
    assert list(store.list("a/")) == []


# ------------------------------------------------------------------------------------- S3


def test_s3_client_is_cached_per_process(s3: boto3.client, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    first = storage.s3_client()
    assert storage.s3_client() is first
    cfg = first.meta.config
    assert cfg.retries["mode"] == "standard"
    assert cfg.connect_timeout <= 10 and cfg.read_timeout <= 60
    monkeypatch.setattr(storage.os, "getpid", lambda: -1)  # as in a forked worker
    assert storage.s3_client() is not first


def test_s3_put_is_single_request_with_md5(bucket: str, s3: boto3.client) -> None:
    store = open_store(f"s3://{bucket}")
    seen: list[dict] = []
    client = storage.s3_client()

    def spy(params: dict, **kwargs: object) -> None:
        seen.append(params)

    client.meta.events.register("before-call.s3.PutObject", spy)
    try:
        store.put_atomic("k.json", b"{}", content_type="application/json")
    finally:
        client.meta.events.unregister("before-call.s3.PutObject", spy)
    assert len(seen) == 1
    assert "Content-MD5" in seen[0]["headers"]
    head = s3.head_object(Bucket=bucket, Key="k.json")
    assert head["ContentType"] == "application/json"


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's standard-mode backoff without the sleeping (keeps retry tests fast)."""
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount",
                        lambda self, context: 0.0)


def _inject(client: boto3.client, operation: str, status: int, code: str
            ) -> tuple[list[int], Callable[[], None]]:
    """Make every ``operation`` request answer ``status``/``code`` before reaching moto."""
    from botocore.awsrequest import AWSResponse

    calls: list[int] = []

    class _Raw:
        def stream(self, **kwargs: object) -> list[bytes]:
            return [self.body]

        body = (f"<Error><Code>{code}</Code><Message>injected</Message></Error>").encode()

    def handler(request: object, **kwargs: object) -> AWSResponse:
        calls.append(1)
        return AWSResponse("http://x", status, {}, _Raw())

    event = f"before-send.s3.{operation}"
    client.meta.events.register(event, handler)
    return calls, lambda: client.meta.events.unregister(event, handler)


@pytest.mark.usefixtures("no_backoff")
def test_s3_throttling_is_retried_then_retryable(bucket: str) -> None:
    store = open_store(f"s3://{bucket}")
    store.put_atomic("k", b"data")
    calls, undo = _inject(storage.s3_client(), "GetObject", 503, "SlowDown")
    try:
        with pytest.raises(StorageError) as info:
            store.read_range("k", 0, 2)
    finally:
        undo()
    assert info.value.retryable is True
    assert len(calls) == 5  # botocore's standard mode: 1 try + 4 retries
    assert store.read_range("k", 0, 2) == b"da"


@pytest.mark.usefixtures("no_backoff")
def test_s3_failed_put_leaves_no_object(bucket: str) -> None:
    store = open_store(f"s3://{bucket}")
    _calls, undo = _inject(storage.s3_client(), "PutObject", 500, "InternalError")
    try:
        with pytest.raises(StorageError) as info:
            store.put_atomic("cat_sep.fits", b"x" * 1000)
    finally:
        undo()
    assert info.value.retryable is True
    assert store.head("cat_sep.fits") is None


def test_s3_access_denied_is_not_retryable(bucket: str) -> None:
    store = open_store(f"s3://{bucket}")
    calls, undo = _inject(storage.s3_client(), "HeadObject", 403, "AccessDenied")
    try:
        with pytest.raises(StorageError) as info:
            store.head("k")
    finally:
        undo()
    assert info.value.retryable is False
    assert len(calls) == 1


def test_s3_unreachable_endpoint_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # A closed loopback port, one attempt (the retrying itself is botocore's, tested above).
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          config=Config(retries={"mode": "standard", "max_attempts": 1},
                                        connect_timeout=1, read_timeout=1))
    store = open_store("s3://bucket", client=client)
    with pytest.raises(StorageError) as info:
        store.head("k")
    assert info.value.retryable is True


def test_s3_missing_bucket_is_not_retryable(s3: boto3.client) -> None:
    store = open_store("s3://no-such-bucket-here")
    with pytest.raises(StorageError) as info:
        store.put_atomic("k", b"x")
    assert info.value.retryable is False


def test_without_credentials_requests_are_unsigned(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """The public archive bucket reads anonymously when no AWS credentials exist at all."""
    import botocore

    from lambda_sep.storage import s3_client

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert s3_client().meta.config.signature_version is botocore.UNSIGNED
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert s3_client().meta.config.signature_version is not botocore.UNSIGNED


def test_read_head_of_an_empty_object_and_of_nothing(store: ObjectStore) -> None:
    """An empty object has no byte 0 (S3 answers InvalidRange) and asking for 0 bytes asks
    nothing: both still tell the object's size and ETag, and a missing one is None."""
    key = "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"
    assert store.read_head(key, 0) is None
    store.put_atomic(key, b"")
    head, info = store.read_head(key, 100)  # type: ignore[misc]
    assert head == b"" and (info.size, info.etag) == (0, store.head(key).etag)
    store.put_atomic(key, b"SIMPLE")
    head, info = store.read_head(key, 0)  # type: ignore[misc]
    assert head == b"" and (info.size, info.etag) == (6, store.head(key).etag)


def test_reads_of_one_version_refuse_another(store: ObjectStore, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """``read_range(..., etag=)`` reads only the version the ETag names: an object replaced
    between two reads of one file (an input reprocessed, a catalog re-made) raises the
    retryable ObjectChanged, on S3 through If-Match (412), on a directory by the open
    file's own ETag; the parts of a long read carry it too."""
    monkeypatch.setattr(storage, "PART_BYTES", 1000)
    key = "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"
    store.put_atomic(key, b"a" * 4500)
    old = store.head(key)
    assert old is not None
    assert store.read_range(key, 0, 10, etag=old.etag) == b"a" * 10
    assert store.read_range(key, 100, 4400, etag=old.etag) == b"a" * 4300
    time.sleep(0.05)  # a directory's ETag has the file's mtime, which moves by clock ticks
    store.put_atomic(key, b"b" * 4500)
    for start, stop in ((0, 10), (100, 4400)):
        with pytest.raises(ObjectChanged, match="changed while being read") as caught:
            store.read_range(key, start, stop, etag=old.etag)
        assert caught.value.retryable
    new = store.head(key)
    assert new is not None and new.etag != old.etag
    assert store.read_range(key, 0, 10, etag=new.etag) == b"b" * 10
    assert store.read_range(key, 0, 10) == b"b" * 10  # no ETag: not checked
