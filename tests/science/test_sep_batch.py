"""Several exposures in one event: each its own result, reads ahead, writes behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from astropy.io import fits

from lambda_sep import storage
from lambda_sep.contract import MAX_BATCH, BatchError, archive_key, exposures, make_batch
from lambda_sep.handler import handler
from standin.demo import make_public
from standin.flt import make_broken_flt


def _item(obs_id: str, bucket: str, attempt: int = 1) -> dict[str, Any]:
    return {"obs_id": obs_id, "input": {"bucket": bucket, "key": archive_key(obs_id)},
            "attempt": attempt}


def test_each_exposure_of_a_batch_gets_its_own_result(
        tmp_path: Path, exposures: list[Any], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    archive, out = tmp_path / "archive", tmp_path / "out"
    monkeypatch.setenv("MASTMIRROR_ALLOWED_BUCKETS", f"file://{archive}")
    monkeypatch.setenv("MASTMIRROR_ALLOWED_OUTPUTS", f"file://{out}")
    store = storage.open_store(f"file://{archive}")
    good, other = exposures
    store.put_atomic(good.key, good.data)
    store.put_atomic(other.key, other.data)
    store.put_atomic(archive_key("icxe15xbq"), make_broken_flt("truncated", "icxe15xbq"))
    src = f"file://{archive}"
    event = {"batch": [_item(good.obs_id, src), _item("icxe15xbq", src),
                       {**_item("icxe15xcq", src), "obs_id": "NOT-AN-ID"},
                       _item("icxe15xmq", src, attempt=2), _item(other.obs_id, src)],
             "output": f"file://{out}", "sep": {}}
    got = handler(event)
    assert got["batch"] == 5
    res = got["results"]
    assert [r["status"] for r in res] == ["done", "failed", "failed", "failed", "done"]
    assert [r["obs_id"] for r in res] == [good.obs_id, "icxe15xbq", "icxe15xcq", "icxe15xmq",
                                          other.obs_id]
    assert "truncated" in res[1]["reason"] and res[2]["reason"].startswith("refused:")
    assert res[3]["retryable"] and "not found" in res[3]["reason"]
    for r in (res[0], res[4]):
        with fits.open(out / r["output_key"]) as hdul:
            assert hdul[1].header["NAXIS2"] == r["sources"] > 200
    for r, attempt in zip(res[1:4], (1, 1, 2), strict=True):
        marker = json.loads((out / r["output_key"]).read_text())
        assert marker["obs_id"] == r["obs_id"] and marker["attempt"] == attempt
    assert json.loads((out / res[3]["output_key"]).read_text())["missing"] is True
    # One log line per exposure, each with its obs_id.
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [x["obs_id"] for x in lines] == [r["obs_id"] for r in res]


class _ShortOfTime:
    """A context whose invocation has 0.5 s left, as Lambda's reports it: less than the
    second of margin the handler keeps, however fast the first exposure was."""

    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 500


def test_an_invocation_short_of_time_leaves_retryable_markers(
        tmp_path: Path, exposures: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    archive, out = tmp_path / "archive", tmp_path / "out"
    monkeypatch.setenv("MASTMIRROR_ALLOWED_BUCKETS", f"file://{archive}")
    monkeypatch.setenv("MASTMIRROR_ALLOWED_OUTPUTS", f"file://{out}")
    store = storage.open_store(f"file://{archive}")
    for e in exposures:
        store.put_atomic(e.key, e.data)
    src = f"file://{archive}"
    got = handler({"batch": [_item(e.obs_id, src) for e in exposures],
                   "output": f"file://{out}", "sep": {}}, _ShortOfTime())
    first, second = got["results"]
    assert first["status"] == "done"  # the first exposure always runs
    assert second["status"] == "failed" and second["retryable"]
    assert second["reason"].startswith("not started: the invocation had 0.5 s left")
    marker = json.loads((out / second["output_key"]).read_text())
    assert marker["retryable"] is True and marker["exception"] == "OutOfTime"


def test_on_s3_reads_overlap_extraction_and_no_head_or_needless_delete(
        s3: boto3.client, bucket: str, exposures: list[Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    make_public(s3, bucket)  # read unsigned, as the archive is by default
    out_bucket = bucket + "-out"
    s3.create_bucket(Bucket=out_bucket)
    monkeypatch.setenv("MASTMIRROR_ALLOWED_BUCKETS", bucket)
    monkeypatch.setenv("MASTMIRROR_ALLOWED_OUTPUTS", f"s3://{out_bucket}/catalogs")
    for e in exposures:
        s3.put_object(Bucket=bucket, Key=e.key, Body=e.data)
    calls: list[tuple[str, str]] = []

    def record(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
        calls.append((model.name, params["url_path"].rsplit("/", 1)[-1]))

    # The archive is read with the unsigned client, the output written with the signed one.
    clients = (storage.s3_client(anonymous=True), storage.s3_client())
    for client in clients:
        client.meta.events.register("before-call.s3", record)
    try:
        got = handler({"batch": [_item(exposures[0].obs_id, bucket, attempt=1),
                                 _item(exposures[1].obs_id, bucket, attempt=2)],
                       "output": f"s3://{out_bucket}/catalogs", "sep": {}})
    finally:
        for client in clients:
            client.meta.events.unregister("before-call.s3", record)
    assert [r["status"] for r in got["results"]] == ["done", "done"]
    first, second = (e.key.rsplit("/", 1)[-1] for e in exposures)
    ops = [op for op, _ in calls]
    assert "HeadObject" not in ops
    # Ranged GETs only (pixels in parallel parts), the first exposure's before the second's.
    gets = [name for op, name in calls if op == "GetObject"]
    assert gets == sorted(gets, key=[first, second].index) and set(gets) == {first, second}
    # The second exposure was being read before the first one's catalog went out ...
    assert calls.index(("GetObject", second)) < ops.index("PutObject")
    # ... and only the second attempt's stale marker is worth a DELETE.
    assert [c for c in calls if c[0] == "DeleteObject"] == [
        ("DeleteObject", second.replace(".fits", "_sep.error.json"))]
    meta = s3.head_object(Bucket=out_bucket, Key="catalogs/" + exposures[0].key.replace(
        ".fits", "_sep.fits"))["Metadata"]
    assert int(meta["input-size"]) == len(exposures[0].data)


def test_batch_shapes() -> None:
    events = [{"obs_id": o, "input": {"bucket": "b", "key": k}, "output": "s3://o/p",
               "sep": {"thresh": 2.0}, "attempt": a}
              for o, k, a in (("x1", "k1", 1), ("x2", "k2", 3))]
    batch = make_batch(events)
    assert batch == {"batch": [{k: e[k] for k in ("obs_id", "input", "attempt")}
                               for e in events], "output": "s3://o/p", "sep": {"thresh": 2.0}}
    assert exposures(batch) == events and exposures(events[0]) == [events[0]]
    # An item cannot steer its exposure to another output.
    assert exposures({**batch, "batch": [{**batch["batch"][0], "output": "s3://evil"}]})[0][
        "output"] == "s3://o/p"
    with pytest.raises(ValueError, match="share"):
        make_batch([events[0], {**events[1], "output": "s3://other"}])
    for bad in ([], "x", [{}] * (MAX_BATCH + 1)):
        with pytest.raises(BatchError):
            exposures({"batch": bad})
    refused = handler({"batch": "nonsense", "output": "s3://o/p"})
    assert refused["status"] == "failed" and refused["reason"].startswith("refused: batch")
