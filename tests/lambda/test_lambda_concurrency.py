"""What Lambda can run at once: `lambda deploy` warns, the daemon keeps its in-flight bound
within it (GetAccountSettings and GetFunctionConcurrency, answered by the Lambda stand-in in
AWS's shapes: moto 5.x has no GetAccountSettings)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from lambda_helpers import deploy_config
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.config import handler_env, load_config
from daemon.lambda_invoke import Capacity, LambdaExecutor, capacity_warning, read_capacity
from standin.awslambda import LambdaStandIn


def test_capacity_is_read_in_lambdas_shapes(standin_env: None) -> None:
    with LambdaStandIn("sep", run=False, account_limit=50) as fn:
        client = boto3.client("lambda", endpoint_url=fn.url)
        settings = client.get_account_settings()
        assert settings["AccountLimit"]["ConcurrentExecutions"] == 50
        assert set(settings["AccountLimit"]) == {
            "TotalCodeSize", "CodeSizeUnzipped", "CodeSizeZipped", "ConcurrentExecutions",
            "UnreservedConcurrentExecutions"}
        assert read_capacity(client, "sep") == Capacity(50, 50, None)
        fn.reserved = 20
        capacity = read_capacity(client, "sep")
        assert capacity == Capacity(50, 30, 20) and capacity.runnable == 20
    assert capacity_warning(Capacity(1000, 1000, None), 1000, "sep") is None
    warning = capacity_warning(Capacity(10, 10, None), 100, "sep")
    assert warning is not None and "runs at most 10 of sep at once" in warning \
        and "account limit 10" in warning and "concurrency = 100" in warning


def test_deploy_warns_when_the_account_runs_fewer_than_the_daemon_wants(
        moto_lambda: str, role_arn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    # The function is created in moto; the account's limits are the stand-in's (a new
    # account's 50, not the documented 1,000), asked through the same Lambda endpoint.
    name = f"sep-cap-{uuid.uuid4().hex[:6]}"
    config = deploy_config(tmp_path, role_arn, name, executor="concurrency = 1000\n")
    with LambdaStandIn(name, run=False, account_limit=50, upstream=moto_lambda) as fn:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", fn.url)
        runner = CliRunner()
        out = runner.invoke(main, ["--config", str(config), "lambda", "deploy"])
        assert out.exit_code == 0, out.output
        assert "created arn:aws:lambda:" in out.stdout
        assert out.stderr.count("warning:") == 1
        assert (f"warning: Lambda runs at most 50 of {name} at once (it has no reserved "
                "concurrency and the account's unreserved pool is 50 (account limit 50)), "
                "fewer than [executor] concurrency = 1000") in out.stderr
        reserved = runner.invoke(main, ["--config", str(config), "lambda", "deploy",
                                        "--reserved-concurrency", "20"])
        assert reserved.exit_code == 0, reserved.output
        assert "reserved concurrency 20" in reserved.stdout
        assert "its reserved concurrency is 20" in reserved.stderr
    # Enough room: no warning.
    config.write_text(config.read_text().replace("concurrency = 1000", "concurrency = 20"))
    with LambdaStandIn(name, run=False, account_limit=50, upstream=moto_lambda) as fn:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", fn.url)
        quiet = CliRunner().invoke(main, ["--config", str(config), "lambda", "deploy",
                                          "--reserved-concurrency", "20"])
        assert quiet.exit_code == 0 and "warning" not in quiet.stderr, quiet.output


def test_unknown_capacity_keeps_the_configured_bound(moto_lambda: str) -> None:
    executor = LambdaExecutor("sep", concurrency=1)
    try:
        with capture_logs() as logs:
            assert executor.limit_in_flight(100) is None  # moto cannot say
        assert executor.in_flight_cap is None
        (line,) = [e for e in logs if e["event"].startswith("Lambda concurrency unknown")]
        assert line["log_level"] == "warning" and line["bound"] == 100
    finally:
        executor.close()


def test_the_daemon_keeps_in_flight_within_what_lambda_can_run(pipeline: Any,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """[executor] concurrency = 10 on an account that runs 2 at once: the daemon never has
    more than 2 events out, and says why, once."""
    p = pipeline
    out_bucket = p.bucket + "-out"
    p.s3().create_bucket(Bucket=out_bucket)
    p.write_config(output={"url": f"s3://{out_bucket}/mirror"},
                   executor={"kind": "lambda", "concurrency": 10, "timeout_seconds": 60.0},
                   schedule={"reconcile_seconds": 0.3},
                   **{"lambda": {"invoke_processes": 1, "invoke_threads": 4}})
    config = load_config(p.config_path)
    with LambdaStandIn("mastmirror-sep", workers=2, env=handler_env(config),
                       account_limit=2) as fn:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", fn.url)
        with capture_logs() as logs:
            summary = p.run_once()
        stats = fn.stats()
    n = len([e for e in p.archive.exposures() if e.science_image])
    assert summary.done == n and summary.failed == 0
    assert stats["accepted"] == n and stats["max_queued"] == 2
    (lowered,) = [e for e in logs if e["event"] == "in-flight bound lowered to what Lambda "
                  "can run"]
    assert (lowered["configured"], lowered["bound"]) == (10, 2)
    assert "account's unreserved pool is 2" in lowered["reason"]


def test_batches_count_as_one_run_each(standin_env: None) -> None:
    """[executor] batch = 4: an event of 4 datasets is one run, so an account that runs 2 at
    once holds 8 datasets in flight, and 8 wanted is no reason to warn."""
    with LambdaStandIn("sep", run=False, account_limit=2) as fn:
        client = boto3.client("lambda", endpoint_url=fn.url)
        executor = LambdaExecutor("sep", concurrency=1, client=client)
        try:
            assert executor.limit_in_flight(8, client, batch=4) is None
            assert executor.in_flight_cap is None
            assert executor.limit_in_flight(40, client, batch=4) == 8
            assert executor.in_flight_cap == 8
        finally:
            executor.close()
