"""The handler end to end, on file:// stores and on S3 (moto on loopback)."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.retries.standard
import pytest
import realframes
from astropy.io import fits

import lambda_sep.handler as handler_mod
from lambda_sep import __version__, storage
from lambda_sep.catalog import RUN_SPECIFIC_KEYWORDS
from lambda_sep.contract import archive_key
from lambda_sep.handler import handler
from lambda_sep.storage import FileStore, StorageError
from standin.flt import BROKEN_KINDS, make_broken_flt

MARKER_FIELDS = {"obs_id", "key", "attempt", "reason", "exception", "retryable", "at",
                 "mastmirror_version", "missing"}
SUMMARY_FIELDS = {"obs_id", "status", "key", "sources", "duration_s", "bytes_read",
                  "peak_rss_mb", "reason"}


@dataclass
class Local:
    """An archive directory and an output directory, both allowed by the environment."""

    root: Path
    archive: Path
    out: Path

    def put(self, obs_id: str, data: bytes, suffix: str = "flt") -> str:
        key = archive_key(obs_id, suffix)
        FileStore(str(self.archive)).put_atomic(key, data)
        return key

    def event(self, obs_id: str, key: str | None = None, **over: Any) -> dict[str, Any]:
        ev = {"obs_id": obs_id,
              "input": {"bucket": f"file://{self.archive}", "key": key or archive_key(obs_id)},
              "output": f"file://{self.out}", "sep": {}, "attempt": 1}
        ev.update(over)
        return ev

    def catalog(self, key: str) -> Path:
        return self.out / (key[:-5] + "_sep.fits")

    def marker(self, key: str) -> Path:
        return self.out / (key[:-5] + "_sep.error.json")


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Local:
    loc = Local(tmp_path, tmp_path / "archive", tmp_path / "out")
    loc.archive.mkdir()
    monkeypatch.setenv("MASTMIRROR_ALLOWED_BUCKETS", f"file://{loc.archive}")
    monkeypatch.setenv("MASTMIRROR_ALLOWED_OUTPUTS", f"file://{loc.out}")
    return loc


def _cards_differing(a: bytes, b: bytes) -> set[str]:
    assert len(a) == len(b)
    return {a[i : i + 8].decode().strip() for i in range(0, len(a), 80)
            if a[i : i + 80] != b[i : i + 80]}


def test_good_image(local: Local, exposure, capsys: pytest.CaptureFixture[str]) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    summary = handler(local.event(exposure.obs_id, key, attempt=4))
    assert set(summary) >= SUMMARY_FIELDS
    assert summary["status"] == "done", summary
    assert summary["key"] == key and summary["attempt"] == 4
    assert summary["sources"] > 200 and summary["reason"] is None
    assert 0 < summary["bytes_read"] <= 0.65 * len(exposure.data)
    assert summary["peak_rss_mb"] > 50 and summary["duration_s"] > 0
    cat = local.catalog(key)
    with fits.open(cat) as hdul:
        assert hdul[1].header["NAXIS2"] == summary["sources"]
        assert hdul[1].header["INKEY"] == key and hdul[1].header["ATTEMPT"] == 4
    # Only the catalog was written, at the mirrored key; no temporary files left.
    assert [p for p in local.out.rglob("*") if p.is_file()] == [cat]
    # One JSON log line with the obs_id.
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["obs_id"] == exposure.obs_id
    assert lines[0]["status"] == "done" and lines[0]["mastmirror_version"] == __version__


def test_success_deletes_stale_marker(local: Local, exposure) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    local.marker(key).parent.mkdir(parents=True)
    local.marker(key).write_text('{"attempt": 1, "reason": "old"}')
    assert handler(local.event(exposure.obs_id, key, attempt=2))["status"] == "done"
    assert not local.marker(key).exists() and local.catalog(key).exists()


def test_retried_event_rewrites_identical_content(local: Local, exposure) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    handler(local.event(exposure.obs_id, key, attempt=1))
    first = local.catalog(key).read_bytes()
    handler(local.event(exposure.obs_id, key, attempt=2))
    second = local.catalog(key).read_bytes()
    assert _cards_differing(first, second) <= set(RUN_SPECIFIC_KEYWORDS)
    assert "ATTEMPT" in _cards_differing(first, second)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every ranged read file stores serve from now on, as (start, stop)."""
    calls: list[tuple[int, int]] = []
    real = FileStore.read_range

    def recording(self: FileStore, k: str, start: int, stop: int, *, etag: str | None = None
                  ) -> bytes:
        calls.append((start, stop))
        return real(self, k, start, stop, etag=etag)

    monkeypatch.setattr(FileStore, "read_range", recording)
    return calls


def test_reads_are_ranged_and_skip_samp_time(local: Local, exposure, reads: list,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    calls = reads
    monkeypatch.setattr(FileStore, "get", lambda *a: pytest.fail("whole-object read"))
    summary = handler(local.event(exposure.obs_id, key))
    assert summary["status"] == "done"
    with fits.open(io.BytesIO(exposure.data)) as hdul:
        samp_start = hdul.fileinfo(hdul.index_of("SAMP"))["hdrLoc"]
    assert calls and all(stop <= samp_start for _, stop in calls)
    assert sum(b - a for a, b in calls) == summary["bytes_read"] <= 0.65 * len(exposure.data)


def _assert_marker(local: Local, key: str, *, reason: str, exception: str,
                   retryable: bool = False, attempt: int = 1) -> dict[str, Any]:
    assert not local.catalog(key).exists()
    body = json.loads(local.marker(key).read_text())
    assert set(body) == MARKER_FIELDS
    assert reason in body["reason"], body["reason"]
    assert body["exception"] == exception
    assert body["retryable"] is retryable
    assert body["missing"] is (exception == "InputMissing")
    assert body["attempt"] == attempt and body["key"] == key
    assert body["mastmirror_version"] == __version__
    # Nothing but the marker in the output, no temporary files.
    assert [p for p in local.out.rglob("*") if p.is_file()] == [local.marker(key)]
    return body


BROKEN_REASONS = {
    "truncated": "truncated", "corrupt-header": "corrupt", "no-sci": "no SCI extension",
    "all-nan": "no finite pixels", "all-zero": "constant", "wrong-shape": "does not match",
    "cube": "3-dimensional", "not-fits": "not a FITS file", "empty": "not a FITS file",
}


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_broken_image_leaves_marker_not_catalog(local: Local, kind: str) -> None:
    key = local.put("icxe15wwq", make_broken_flt(kind))
    summary = handler(local.event("icxe15wwq", key, attempt=3))
    assert summary["status"] == "failed"
    assert BROKEN_REASONS[kind] in summary["reason"]
    _assert_marker(local, key, reason=BROKEN_REASONS[kind], exception="ImageError",
                   attempt=3)


def _with_primary_cards(data: bytes, n_cards: int) -> bytes:
    """The FLT with ``n_cards`` COMMENT cards added to its primary header (before END)."""
    end = data.index(b"END" + b" " * 77)  # the primary header's END card
    primary_blocks = -(-(end + 80) // 2880) * 2880
    cards = b"".join(f"COMMENT filler card {i:<58d}".encode()[:80].ljust(80)
                     for i in range(n_cards))
    header = data[:end] + cards + data[end:end + 80]
    header += b" " * (-len(header) % 2880)
    return header + data[primary_blocks:]


def test_a_large_header_is_read(local: Local, exposure) -> None:
    """A primary header of 100 blocks (3,600 extra cards) is unusual, not wrong."""
    key = local.put("icxe15wwq", _with_primary_cards(exposure.data, 3600))
    summary = handler(local.event("icxe15wwq", key))
    assert summary["status"] == "done", summary["reason"]
    assert summary["sources"] > 100


def test_a_huge_header_is_refused(local: Local, exposure) -> None:
    """Past MAX_HEADER_BLOCKS (5.8 MB of cards) the file is refused, not read forever."""
    from lambda_sep.fitsread import MAX_HEADER_BLOCKS

    data = _with_primary_cards(exposure.data, MAX_HEADER_BLOCKS * 36 + 36)
    key = local.put("icxe15wwq", data)
    summary = handler(local.event("icxe15wwq", key))
    assert summary["status"] == "failed"
    assert summary["bytes_read"] <= (MAX_HEADER_BLOCKS + 30) * 2880
    _assert_marker(local, key, reason="no END card within", exception="ImageError")


def test_missing_object(local: Local) -> None:
    """Retryable: MAST can list a release before the bucket has the file."""
    summary = handler(local.event("icxe15wwq"))
    assert summary["status"] == "failed"
    _assert_marker(local, archive_key("icxe15wwq"), reason="not found", exception="InputMissing",
                   retryable=True)


def test_unexpected_exception_leaves_marker(local: Local, exposure,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    key = local.put(exposure.obs_id, exposure.data)

    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(handler_mod, "extract", boom)
    summary = handler(local.event(exposure.obs_id, key))
    assert summary["status"] == "failed"
    _assert_marker(local, key, reason="unexpected RuntimeError: boom", exception="RuntimeError")


def test_out_of_memory_leaves_marker(local: Local, exposure,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key = local.put(exposure.obs_id, exposure.data)

    def oom(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(handler_mod, "build_catalog", oom)
    handler(local.event(exposure.obs_id, key))
    _assert_marker(local, key, reason="out of memory", exception="MemoryError")


def test_transient_write_failure_is_retryable(local: Local, exposure,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    real = FileStore.put_atomic

    def flaky(self: FileStore, k: str, data: bytes, **kw: Any) -> None:
        if k.endswith("_sep.fits"):
            raise StorageError("SlowDown: please reduce your request rate", retryable=True)
        real(self, k, data, **kw)

    monkeypatch.setattr(FileStore, "put_atomic", flaky)
    summary = handler(local.event(exposure.obs_id, key))
    assert summary["retryable"] is True
    _assert_marker(local, key, reason="storage error", exception="StorageError", retryable=True)


def test_unwritable_output_is_reported_not_raised(local: Local, exposure,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key = local.put(exposure.obs_id, exposure.data)

    def broken(self: FileStore, k: str, data: bytes, **kw: Any) -> None:
        raise StorageError("disk on fire")

    monkeypatch.setattr(FileStore, "put_atomic", broken)
    summary = handler(local.event(exposure.obs_id, key))
    assert summary["status"] == "failed"
    assert "error marker not written" in summary["reason"]
    assert not local.out.exists() or not any(local.out.rglob("*.*"))


def test_refusal_with_marker_writes_only_the_marker(local: Local, exposure, file_tree) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    before = file_tree(local.root)
    ev = local.event(exposure.obs_id, key)
    ev["input"]["bucket"] = "stpubdata"  # not in this environment's allow-list
    summary = handler(ev)
    assert summary["status"] == "failed" and summary["reason"].startswith("refused:")
    assert summary["bytes_read"] == 0
    _assert_marker(local, key, reason="not allowed", exception="EventError")
    after = file_tree(local.root)
    assert set(after) - set(before) == {str(local.marker(key).relative_to(local.root))}


def test_bad_obs_id_is_refused(local: Local, exposure) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    summary = handler(local.event("icxe15wwz", key))
    assert summary["status"] == "failed"
    _assert_marker(local, key, reason="does not match", exception="EventError")


@pytest.mark.parametrize(("field", "value"), [
    ("key", "hst/public/icxe/icxe15wwq/../../../../escape_flt.fits"),
    ("key", "/abs/hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits"),
    ("key", "hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits/../../x"),
    ("key", "hst/public/\u0456cxe/\u0456cxe15wwq/\u0456cxe15wwq_flt.fits"),
    ("key", "hst/public/icxe/icxe15wwq/" + "a" * 5000 + ".fits"),
    ("output", "OUTSIDE"),
    ("output", "file:///"),
    ("output", "OUT/../../elsewhere"),
])
def test_path_tricks_write_nothing(local: Local, exposure, file_tree, field: str,
                                   value: str) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    before = file_tree(local.root)
    ev = local.event(exposure.obs_id, key)
    if field == "key":
        ev["input"]["key"] = value
    else:
        ev["output"] = value.replace("OUTSIDE", f"file://{local.root}/elsewhere").replace(
            "OUT", f"file://{local.out}")
    summary = handler(ev)
    assert summary["status"] == "failed" and summary["reason"].startswith("refused:")
    assert file_tree(local.root) == before  # nothing written, anywhere


def test_warm_invocation_imports_nothing(local: Local, exposure) -> None:
    key = local.put(exposure.obs_id, exposure.data)
    handler(local.event(exposure.obs_id, key))
    modules = set(sys.modules)
    handler(local.event(exposure.obs_id, key, attempt=2))
    assert set(sys.modules) == modules


# ------------------------------------------------------------------------------------ S3


@pytest.fixture
def s3env(s3: boto3.client, bucket: str, monkeypatch: pytest.MonkeyPatch
          ) -> tuple[boto3.client, str, str]:
    """An input bucket, public like stpubdata (the handler reads it unsigned by default),
    and an output bucket/prefix on moto, both allowed."""
    from standin.demo import make_public

    make_public(s3, bucket)
    out_bucket = bucket + "-out"
    s3.create_bucket(Bucket=out_bucket)
    monkeypatch.setenv("MASTMIRROR_ALLOWED_BUCKETS", bucket)
    monkeypatch.setenv("MASTMIRROR_ALLOWED_OUTPUTS", f"s3://{out_bucket}/catalogs")
    return s3, bucket, out_bucket


@contextlib.contextmanager
def _hooked(event: str, hook: Callable[..., Any]) -> Iterator[None]:
    """A botocore event hook on the handler's shared unsigned S3 client (the one it reads
    the archive with), for the block only."""
    client = storage.s3_client(anonymous=True)
    client.meta.events.register(event, hook)
    try:
        yield
    finally:
        client.meta.events.unregister(event, hook)


def _s3_event(bucket: str, out_bucket: str, obs_id: str = "icxe15wwq", **over: Any
              ) -> dict[str, Any]:
    ev = {"obs_id": obs_id, "input": {"bucket": bucket, "key": archive_key(obs_id)},
          "output": f"s3://{out_bucket}/catalogs", "sep": {"thresh": 3.0}, "attempt": 2}
    ev.update(over)
    return ev


def test_s3_good_image_with_metadata(s3env, exposure) -> None:
    s3, bucket, out_bucket = s3env
    s3.put_object(Bucket=bucket, Key=archive_key("icxe15wwq"), Body=exposure.data)
    ranges: list[str] = []

    def record(params: dict, **kwargs: object) -> None:
        ranges.append(params["headers"].get("Range", "WHOLE"))

    with _hooked("before-call.s3.GetObject", record):
        summary = handler(_s3_event(bucket, out_bucket))
    assert summary["status"] == "done", summary
    cat_key = "catalogs/hst/public/icxe/icxe15wwq/icxe15wwq_flt_sep.fits"
    head = s3.head_object(Bucket=out_bucket, Key=cat_key)
    meta = head["Metadata"]
    assert meta["obs-id"] == "icxe15wwq" and meta["attempt"] == "2"
    assert int(meta["sources"]) == summary["sources"] > 200
    assert int(meta["bytes-read"]) == summary["bytes_read"]
    assert int(meta["duration-ms"]) > 0 and float(meta["peak-rss-mb"]) > 0
    assert meta["sep-version"] and meta["mastmirror-version"] == __version__
    assert head["ContentType"] == "application/fits"
    body = s3.get_object(Bucket=out_bucket, Key=cat_key)["Body"].read()
    assert fits.getheader(io.BytesIO(body), 1)["NAXIS2"] == summary["sources"]
    # Ranged GETs only, ending before SAMP.
    with fits.open(io.BytesIO(exposure.data)) as hdul:
        samp_start = hdul.fileinfo(hdul.index_of("SAMP"))["hdrLoc"]
    assert ranges and all(r.startswith("bytes=") for r in ranges)
    assert all(int(r.split("-")[1]) < samp_start for r in ranges)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=out_bucket)["Contents"]]
    assert keys == [cat_key]


def test_s3_missing_object(s3env) -> None:
    s3, bucket, out_bucket = s3env
    summary = handler(_s3_event(bucket, out_bucket))
    assert summary["status"] == "failed"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=out_bucket)["Contents"]]
    assert keys == ["catalogs/hst/public/icxe/icxe15wwq/icxe15wwq_flt_sep.error.json"]
    marker = json.loads(s3.get_object(Bucket=out_bucket, Key=keys[0])["Body"].read())
    assert set(marker) == MARKER_FIELDS and marker["attempt"] == 2
    assert "not found" in marker["reason"] and marker["retryable"] is True
    assert marker["missing"] is True


def test_s3_throttled_input_is_retryable(s3env, exposure,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.awsrequest import AWSResponse

    s3, bucket, out_bucket = s3env
    s3.put_object(Bucket=bucket, Key=archive_key("icxe15wwq"), Body=exposure.data)
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount",
                        lambda self, context: 0.0)

    class _Raw:
        body = b"<Error><Code>SlowDown</Code><Message>slow down</Message></Error>"

        def stream(self, **kwargs: object) -> list[bytes]:
            return [self.body]

    def throttle(request: object, **kwargs: object) -> AWSResponse:
        return AWSResponse("http://x", 503, {}, _Raw())

    with _hooked("before-send.s3.GetObject", throttle):
        summary = handler(_s3_event(bucket, out_bucket))
    assert summary["status"] == "failed" and summary["retryable"] is True
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=out_bucket)["Contents"]]
    assert keys == ["catalogs/hst/public/icxe/icxe15wwq/icxe15wwq_flt_sep.error.json"]
    marker = json.loads(s3.get_object(Bucket=out_bucket, Key=keys[0])["Body"].read())
    assert marker["retryable"] is True and "SlowDown" in marker["reason"]


@pytest.mark.parametrize("mutate", [
    lambda ev, b, o: ev.update(output=f"s3://{o}/catalogs-other"),
    lambda ev, b, o: ev.update(output=f"s3://{o}"),
    lambda ev, b, o: ev.update(output=f"s3://{o}/catalogs/../x"),
    lambda ev, b, o: ev["input"].update(key="hst/public/icxe/icxe15wwq/../../../x_flt.fits"),
    lambda ev, b, o: ev["input"].update(key="hst/public/icxe/icxe15wwq/icxe15wwq_flt.fits\n"),
])
def test_s3_refusals_write_nothing(s3env, s3_tree: Callable[[], dict[str, bytes]],
                                   mutate: Callable[[dict, str, str], None]) -> None:
    _s3, bucket, out_bucket = s3env
    before = s3_tree()
    ev = _s3_event(bucket, out_bucket)
    mutate(ev, bucket, out_bucket)
    summary = handler(ev)
    assert summary["status"] == "failed" and summary["reason"].startswith("refused:")
    assert s3_tree() == before


def test_s3_disallowed_bucket_marker_only(s3env, s3_tree: Callable[[], dict[str, bytes]]
                                          ) -> None:
    _s3, _bucket, out_bucket = s3env
    before = s3_tree()
    summary = handler(_s3_event("stpubdata", out_bucket))
    assert summary["reason"].startswith("refused: input bucket")
    added = set(s3_tree()) - set(before)
    assert added == {f"{out_bucket}/catalogs/hst/public/icxe/icxe15wwq/"
                     "icxe15wwq_flt_sep.error.json"}


def test_s3_client_reused_across_invocations(s3env) -> None:
    _s3, bucket, out_bucket = s3env
    handler(_s3_event(bucket, out_bucket))
    first, reader = storage.s3_client(), storage.s3_client(anonymous=True)
    handler(_s3_event(bucket, out_bucket, attempt=3))
    assert storage.s3_client() is first and storage.s3_client(anonymous=True) is reader
    assert reader is not first  # the archive unsigned, the output signed


# ------------------------------------------------------------ skipped: not an imaging exposure

SKIP_FIELDS = {"obs_id", "key", "attempt", "reason", "at", "mastmirror_version", "input_etag"}


def _skip_marker(local: Local, key: str) -> Path:
    return local.out / (key[:-5] + "_sep.skipped.json")


def _assert_skipped(local: Local, key: str, summary: dict[str, Any], reason: str
                    ) -> dict[str, Any]:
    assert summary["status"] == "skipped", summary
    assert reason in summary["reason"] and summary["output_key"] == key[:-5] + "_sep.skipped.json"
    body = json.loads(_skip_marker(local, key).read_text())
    assert set(body) == SKIP_FIELDS
    assert body["reason"] == summary["reason"] and body["key"] == key
    assert body["mastmirror_version"] == __version__
    # The marker is all there is: no catalog, no error marker, no temporary files.
    assert [p for p in local.out.rglob("*") if p.is_file()] == [_skip_marker(local, key)]
    return body


@pytest.mark.parametrize("obs_id", realframes.GRIZLI_GRISM)
def test_real_grism_exposure_is_skipped_without_reading_pixels(
        local: Local, obs_id: str, reads: list, capsys: pytest.CaptureFixture[str]) -> None:
    data = realframes.frame(obs_id)
    key = local.put(obs_id, data)
    calls = reads
    summary = handler(local.event(obs_id, key, attempt=2))
    body = _assert_skipped(local, key, summary, "OBSTYPE = 'SPECTROSCOPIC'")
    info = FileStore(str(local.archive)).head(key)
    assert info is not None and body["input_etag"] == info.etag and body["attempt"] == 2
    with fits.open(io.BytesIO(data)) as hdul:
        sci_data = hdul.fileinfo(hdul.index_of("SCI"))["datLoc"]
    assert calls and all(stop <= max(sci_data, 64 * 1024) for _, stop in calls)
    assert summary["bytes_read"] == sum(b - a for a, b in calls) <= 64 * 1024
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "sep skipped" and line["level"] == "info"


def test_zero_exposure_time_is_skipped(local: Local) -> None:
    with fits.open(io.BytesIO(realframes.frame("ib6o23rtq"))) as hdul:
        hdul[0].header["EXPTIME"] = 0.0
        buf = io.BytesIO()
        hdul.writeto(buf)
    key = local.put("ib6o23rtq", buf.getvalue())
    _assert_skipped(local, key, handler(local.event("ib6o23rtq", key)),
                    "EXPTIME = 0: no exposure")


def test_ima_key_is_skipped_before_any_read(local: Local, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    key = local.put("ibxy07p9q", realframes.untrimmed("ibxy07p9q"), suffix="ima")
    for name in ("head", "read_range", "get"):
        monkeypatch.setattr(FileStore, name, lambda *a, _n=name: pytest.fail(f"{_n} called"))
    summary = handler(local.event("ibxy07p9q", key))
    body = _assert_skipped(local, key, summary, "product type 'ima' is not catalogued")
    assert body["input_etag"] is None and summary["bytes_read"] == 0


def test_skip_deletes_stale_error_marker(local: Local) -> None:
    key = local.put("ib6o21qmq", realframes.frame("ib6o21qmq"))
    local.marker(key).parent.mkdir(parents=True)
    local.marker(key).write_text('{"attempt": 1, "reason": "old"}')
    summary = handler(local.event("ib6o21qmq", key, attempt=2))
    _assert_skipped(local, key, summary, "SPECTROSCOPIC")
    assert not local.marker(key).exists()


@pytest.mark.parametrize("obs_id", [*realframes.SUBARRAYS, *realframes.GRIZLI_IMAGING])
def test_real_imaging_exposure_catalogued(local: Local, obs_id: str) -> None:
    """The real imaging frames go through: their catalog header says which noise and WCS
    model were used and what the detection threshold was in effect."""
    key = local.put(obs_id, realframes.frame(obs_id))
    summary = handler(local.event(obs_id, key))
    assert summary["status"] == "done", summary
    h = fits.getheader(local.catalog(key), 1)
    assert h["NAXIS2"] == summary["sources"] >= 1
    assert h["WCSMODEL"] == "TAN" and h["WCSOK"] is True
    assert h["DETNSIG"] == pytest.approx(1.169, abs=1e-3) and h["DETLEVEL"] > 0
    assert h["DETLEVEL"] == pytest.approx(h["DETNSIG"] * h["NOISEMED"], rel=1e-5)
    assert h["MASKPHOT"] == "SEP mean fill" and h["NDROPMSK"] >= 0
    if obs_id in realframes.SUBARRAYS:
        assert h["NOISESRC"] == "ERR" and h["NOISEFIX"] == 0 and h["NOISEWHY"] == ""
    else:
        assert h["NOISESRC"] == "background rms" and h["NOISEFIX"] > 0
        assert h["NOISEWHY"].startswith("ERR unusable")
