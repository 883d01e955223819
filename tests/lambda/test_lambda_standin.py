"""The Lambda Invoke API stand-in, driven by boto3's real Lambda client: it runs the real
handler, answers like Lambda (status codes, headers, error documents), injects faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
from astropy.io import fits
from lambda_helpers import FUNCTION, REPO, Archive

from standin.awslambda import LambdaStandIn


def _client(url: str | None = None, attempts: int = 1) -> Any:
    config = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": attempts})
    return boto3.session.Session().client("lambda", endpoint_url=url, config=config)


@pytest.fixture
def running(standin_env: None, flt_archive: Archive, tmp_path: Path) -> Iterator[LambdaStandIn]:
    """A stand-in running the real handler in 1 worker, allowed the archive and tmp_path."""
    out = tmp_path / "catalogs"
    out.mkdir()
    s = LambdaStandIn(FUNCTION, workers=1, env=flt_archive.env(out)).start()
    try:
        yield s
    finally:
        s.stop()


def test_runs_the_real_handler(running: LambdaStandIn, flt_archive: Archive,
                               tmp_path: Path) -> None:
    out = tmp_path / "catalogs"
    lam = _client(running.url)
    event = flt_archive.event(out)
    sync = lam.invoke(FunctionName=FUNCTION, Payload=json.dumps(event))
    assert sync["StatusCode"] == 200 and "FunctionError" not in sync
    assert sync["ExecutedVersion"] == "$LATEST"
    summary = json.loads(sync["Payload"].read())
    assert summary["status"] == "done" and summary["obs_id"] == flt_archive.obs_id
    with fits.open(out / summary["output_key"]) as hdul:
        assert hdul[1].header["NAXIS2"] == summary["sources"] > 0

    (out / summary["output_key"]).unlink()
    ev = lam.invoke(FunctionName=FUNCTION, InvocationType="Event",
                    Payload=json.dumps({**event, "attempt": 2}))
    assert ev["StatusCode"] == 202 and ev["Payload"].read() == b""
    assert ev["ResponseMetadata"]["RequestId"]
    assert running.wait_idle(60)
    stats = running.stats()
    assert (stats["received"], stats["accepted"], stats["run"], stats["errors"]) == (2, 2, 2, 0)
    assert stats["run_by_obs"] == {flt_archive.obs_id: 2}
    assert [r["attempt"] for r in running.results(flt_archive.obs_id)] == [1, 2]
    assert (out / summary["output_key"]).exists()  # the queued event ran and wrote it again


def test_lost_invocations_never_run(running: LambdaStandIn, flt_archive: Archive,
                                    tmp_path: Path) -> None:
    running.arm("lose")
    lam = _client(running.url)
    resp = lam.invoke(FunctionName=FUNCTION, InvocationType="Event",
                      Payload=json.dumps(flt_archive.event(tmp_path / "catalogs")))
    assert resp["StatusCode"] == 202 and resp["ResponseMetadata"]["RequestId"]
    assert running.wait_idle(5)
    stats = running.stats()
    assert (stats["accepted"], stats["lost"], stats["run"]) == (1, 1, 0)
    assert not list((tmp_path / "catalogs").rglob("*.fits"))


def test_a_function_that_raises_is_unhandled(standin_env: None) -> None:
    with LambdaStandIn(FUNCTION, workers=1, handler="lambda_helpers:explode") as s:
        lam = _client(s.url)
        resp = lam.invoke(FunctionName=FUNCTION, Payload=b'{"obs_id": "icxe15wwq"}')
        body = json.loads(resp["Payload"].read())
        lam.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=b"{}")
        assert s.wait_idle(30)
        stats = s.stats()
    assert resp["StatusCode"] == 200 and resp["FunctionError"] == "Unhandled"
    assert body["errorType"] == "RuntimeError" and "boom" in body["errorMessage"]
    assert (stats["accepted"], stats["errors"], stats["run"]) == (2, 2, 0)


def test_errors_look_like_lambdas(standin: LambdaStandIn) -> None:
    lam = _client()  # endpoint from AWS_ENDPOINT_URL_LAMBDA
    assert lam.meta.endpoint_url == standin.url
    standin.arm("throttle")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        lam.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=b"{}")
    resp = err.value.response
    assert resp["Error"]["Code"] == "TooManyRequestsException"
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert resp["Reason"] == "CallerRateLimitExceeded" and resp["Type"] == "User"
    assert resp["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
    assert isinstance(err.value, lam.exceptions.TooManyRequestsException)

    standin.arm("500")
    with pytest.raises(lam.exceptions.ServiceException):
        lam.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=b"{}")
    with pytest.raises(lam.exceptions.ResourceNotFoundException, match="Function not found"):
        lam.invoke(FunctionName="other", InvocationType="Event", Payload=b"{}")
    with pytest.raises(lam.exceptions.RequestTooLargeException):
        lam.invoke(FunctionName=FUNCTION, InvocationType="Event",
                   Payload=json.dumps({"x": "y" * 300_000}))
    with pytest.raises(lam.exceptions.InvalidRequestContentException):
        lam.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=b"{not json")
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}"
    assert lam.invoke(FunctionName=arn, InvocationType="Event",
                      Payload=b"{}")["StatusCode"] == 202
    assert lam.invoke(FunctionName=FUNCTION, InvocationType="DryRun")["StatusCode"] == 204
    # An unsigned request is refused, as by Lambda.
    req = urllib.request.Request(f"{standin.url}/2015-03-31/functions/{FUNCTION}/invocations",
                                 data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(req, timeout=5)
    assert unsigned.value.code == 403
    stats = standin.stats()
    assert stats["faults"] == {"throttle": 1, "500": 1}
    assert stats["accepted"] == 1  # only the ARN-addressed event (DryRun runs nothing)


def test_dropped_connection_is_seen_by_the_client(standin: LambdaStandIn) -> None:
    standin.arm("drop")
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        _client().invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=b"{}")
    standin.arm("503")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        _client().invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=b"{}")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert standin.stats()["accepted"] == 0


def test_command_line_no_run(standin_env: None) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "standin.awslambda", "--port", "0",
                             "--no-run"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        lam = _client(url)
        ids = {lam.invoke(FunctionName=FUNCTION, InvocationType="Event",
                          Payload=json.dumps({"obs_id": f"icxe1{i:04d}"}))
               ["ResponseMetadata"]["RequestId"] for i in range(5)}
        assert len(ids) == 5
        fault = urllib.request.Request(f"{url}/_standin/faults", method="POST",
                                       data=json.dumps({"kind": "throttle"}).encode())
        urllib.request.urlopen(fault, timeout=5).read()
        with pytest.raises(lam.exceptions.TooManyRequestsException):
            lam.invoke(FunctionName=FUNCTION, InvocationType="Event", Payload=b"{}")
        with urllib.request.urlopen(f"{url}/_standin/stats", timeout=5) as resp:
            stats = json.loads(resp.read())
        assert (stats["received"], stats["accepted"], stats["run"]) == (6, 5, 0)
        assert stats["accepted_by_obs"] == {f"icxe1{i:04d}": 1 for i in range(5)}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert json.loads(err.strip().splitlines()[-1])["accepted"] == 5
