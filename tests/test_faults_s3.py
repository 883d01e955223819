"""S3 trouble on the wire: SlowDown/503, connections dropped before an answer and bodies cut
half-way, on reads and writes, between the real clients and the moto server.

The daemon and the handler both go through the fault proxy; the run must end with every
dataset done, and every catalog whole and identical to one made without faults.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from astropy.io import fits
from harness import Pipeline
from s3_fault_proxy import S3FaultProxy

from daemon.config import load_config
from lambda_sep.catalog import RUN_SPECIFIC_KEYWORDS
from lambda_sep.handler import handler
from state.store import StateStore


def _digest(data: bytes) -> str:
    import io

    h = hashlib.sha256()
    with fits.open(io.BytesIO(data)) as hdul:
        for hdu in hdul:
            h.update("".join(c.image for c in hdu.header.cards
                             if c.keyword not in RUN_SPECIFIC_KEYWORDS).encode())
            if hdu.data is not None:
                h.update(hdu.data.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("output", ["s3", "dir"])
def test_the_pipeline_survives_a_faulty_s3(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path, output: str) -> None:
    p = pipeline
    out_bucket = p.bucket + "-cat"
    p.s3().create_bucket(Bucket=out_bucket)
    output_url = f"s3://{out_bucket}/m" if output == "s3" else "catalogs"
    p.write_config(output={"url": output_url},
                   executor={"max_attempts": 5, "retry_backoff_seconds": 0.0})
    exposures = p.archive.exposures()

    # Reference catalogs, made without faults.
    ref_dir = tmp_path / "reference"
    reference = {}
    for e in exposures:
        event = {"obs_id": e.dataset, "input": {"bucket": p.bucket, "key": e.key},
                 "output": f"file://{ref_dir}", "sep": {}, "attempt": 1}
        monkeypatch.setenv("MASTMIRROR_ALLOWED_BUCKETS", p.bucket)
        monkeypatch.setenv("MASTMIRROR_ALLOWED_OUTPUTS", f"file://{ref_dir}")
        assert handler(event)["status"] == "done"
        reference[e.dataset] = _digest(
            (ref_dir / e.key.replace(".fits", "_sep.fits")).read_bytes())

    with S3FaultProxy(p.endpoint, rate=0.3, seed=8) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        summary = p.run_once()
    faults = {k: v for k, v in proxy.counts.items() if not k.startswith("requests")}
    print("\nS3 faults injected:", json.dumps(dict(sorted(proxy.counts.items()))))
    assert sum(faults.values()) >= 8, proxy.counts  # the run really met trouble
    assert any(k.startswith("slowdown") for k in faults)
    assert any(k.startswith("drop") for k in faults)
    assert any(k.startswith("cut") for k in faults)
    assert summary.failed == 0 and summary.done == len(exposures)

    with StateStore(load_config(p.config_path).state_path, create=False) as s:
        rows = {r["obs_id"]: r for r in s.db["datasets"].rows}
    for e in exposures:
        key = e.key.replace(".fits", "_sep.fits")
        if output == "s3":
            data = p.s3().get_object(Bucket=out_bucket, Key=f"m/{key}")["Body"].read()
        else:
            data = (p.output_dir / key).read_bytes()
        assert _digest(data) == reference[e.dataset], f"{e.dataset}: catalog differs"
        assert rows[e.dataset]["sources"] == fits.getheader(
            __import__("io").BytesIO(data), 1)["NAXIS2"]
