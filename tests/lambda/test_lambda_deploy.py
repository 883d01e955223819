"""``mastmirror lambda deploy`` against moto's Lambda, IAM, CloudWatch Logs and S3 on
loopback: create, converge, stay idempotent, stage big zips in S3, refuse what cannot work."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from lambda_helpers import deploy_config, tiny_bundle

from daemon import lambda_deploy as dep
from daemon.cli import main
from daemon.config import config_from_dict, handler_env
from daemon.lambda_cli import function_spec
from daemon.lambda_deploy import DeployError, FunctionSpec, deploy


def _spec(role_arn: str, name: str | None = None, **changes: object) -> FunctionSpec:
    base = FunctionSpec(
        name=name or f"sep-{uuid.uuid4().hex[:8]}", runtime="python3.12", architecture="arm64",
        memory_mb=1024, timeout_seconds=60, role_arn=role_arn,
        environment={"MASTMIRROR_ALLOWED_BUCKETS": "stpubdata",
                     "MASTMIRROR_ALLOWED_OUTPUTS": "s3://mirror-out/catalogs"},
        async_retries=0, max_event_age_seconds=21600, log_retention_days=30)
    return FunctionSpec(**{**base.__dict__, **changes})


def _sha(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def test_create_then_idempotent_then_update(moto_lambda: str, role_arn: str,
                                            tmp_path: Path) -> None:
    lam, logs = boto3.client("lambda"), boto3.client("logs")
    zip1 = tiny_bundle(tmp_path / "v1.zip", "v1")
    spec = _spec(role_arn, reserved_concurrency=50)

    first = deploy(spec, zip1)
    assert first.created and first.code_updated and first.async_config_updated
    cfg = lam.get_function(FunctionName=spec.name)["Configuration"]
    assert cfg["Runtime"] == "python3.12" and cfg["Architectures"] == ["arm64"]
    assert cfg["Handler"] == "lambda_sep.handler.handler"
    assert (cfg["MemorySize"], cfg["Timeout"], cfg["Role"]) == (1024, 60, role_arn)
    assert cfg["Environment"]["Variables"] == dict(spec.environment)
    assert cfg["CodeSha256"] == _sha(zip1) == first.code_sha256
    assert first.function_arn == cfg["FunctionArn"]
    eic = lam.get_function_event_invoke_config(FunctionName=spec.name)
    assert (eic["MaximumRetryAttempts"], eic["MaximumEventAgeInSeconds"]) == (0, 21600)
    assert lam.get_function_concurrency(FunctionName=spec.name)[
        "ReservedConcurrentExecutions"] == 50
    (group,) = logs.describe_log_groups(logGroupNamePrefix=spec.log_group)["logGroups"]
    assert (group["logGroupName"], group["retentionInDays"]) == (f"/aws/lambda/{spec.name}", 30)

    again = deploy(spec, zip1)
    assert not (again.created or again.code_updated or again.config_updated
                or again.async_config_updated or again.concurrency_updated
                or again.log_retention_updated)
    assert again.actions == ["nothing to change"]

    zip2 = tiny_bundle(tmp_path / "v2.zip", "v2")
    changed = _spec(role_arn, name=spec.name, memory_mb=2048, timeout_seconds=120,
                    architecture="x86_64", log_retention_days=14, reserved_concurrency=None,
                    environment={**spec.environment, "MASTMIRROR_ALLOWED_BUCKETS": "other"})
    third = deploy(changed, zip2)
    assert third.code_updated and third.config_updated and not third.created
    assert third.log_retention_updated and third.concurrency_updated
    cfg = lam.get_function(FunctionName=spec.name)["Configuration"]
    assert cfg["CodeSha256"] == _sha(zip2)
    # (moto's UpdateFunctionCode ignores Architectures, so the switch is not visible here.)
    assert (cfg["MemorySize"], cfg["Timeout"]) == (2048, 120)
    assert cfg["Environment"]["Variables"]["MASTMIRROR_ALLOWED_BUCKETS"] == "other"
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(
        FunctionName=spec.name)
    (group,) = logs.describe_log_groups(logGroupNamePrefix=spec.log_group)["logGroups"]
    assert group["retentionInDays"] == 14
    assert any("MemorySize" in a and "Timeout" in a for a in third.actions)


def test_async_settings_are_put_when_they_differ(moto_lambda: str, role_arn: str,
                                                 tmp_path: Path) -> None:
    zip1 = tiny_bundle(tmp_path / "v1.zip")
    spec = _spec(role_arn, async_retries=2, max_event_age_seconds=3600)
    deploy(spec, zip1)
    eic = boto3.client("lambda").get_function_event_invoke_config(FunctionName=spec.name)
    assert (eic["MaximumRetryAttempts"], eic["MaximumEventAgeInSeconds"]) == (2, 3600)
    # (moto keeps the first setting on a later put, so a change is checked by the report.)
    report = deploy(_spec(role_arn, name=spec.name, async_retries=0), zip1)
    assert report.async_config_updated and not report.code_updated


def test_zip_staged_in_s3(moto_lambda: str, role_arn: str, tmp_path: Path) -> None:
    boto3.client("s3").create_bucket(Bucket="deploy-artifacts")
    zip1 = tiny_bundle(tmp_path / "v1.zip")
    spec = _spec(role_arn)
    report = deploy(spec, zip1, code_store="s3://deploy-artifacts/lambda")
    key = f"lambda/{spec.name}-{hashlib.sha256(zip1.read_bytes()).hexdigest()[:16]}.zip"
    assert report.code_location == f"s3://deploy-artifacts/{key}"
    body = boto3.client("s3").get_object(Bucket="deploy-artifacts", Key=key)["Body"].read()
    assert body == zip1.read_bytes()
    cfg = boto3.client("lambda").get_function(FunctionName=spec.name)
    assert cfg["Configuration"]["CodeSha256"] == _sha(zip1)
    assert cfg["Code"]["RepositoryType"] == "S3"


def test_a_zip_too_big_to_upload_directly_needs_s3(moto_lambda: str, role_arn: str,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dep, "DIRECT_UPLOAD_LIMIT", 100)
    with pytest.raises(DeployError, match="code_s3"):
        deploy(_spec(role_arn), tiny_bundle(tmp_path / "v1.zip"))


def test_refusals(aws: str, tmp_path: Path) -> None:
    good = tiny_bundle(tmp_path / "ok.zip")
    with pytest.raises(DeployError, match="role_arn is empty"):
        deploy(_spec(""), good)
    with pytest.raises(DeployError, match="log_retention_days = 10"):
        deploy(_spec("arn:aws:iam::123456789012:role/x", log_retention_days=10), good)
    not_bundle = tmp_path / "other.zip"
    not_bundle.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    with pytest.raises(DeployError, match="not a mastmirror bundle"):
        deploy(_spec("arn:aws:iam::123456789012:role/x"), not_bundle)
    with pytest.raises(DeployError, match="lambda build"):
        deploy(_spec("arn:aws:iam::123456789012:role/x"), tmp_path / "missing.zip")
    local = config_from_dict({"output": {"url": "/srv/catalogs"}})
    with pytest.raises(DeployError, match=r"\[output\] url.*s3://"):
        function_spec(local)


def test_spec_from_config() -> None:
    config = config_from_dict({
        "archive": {"bucket": "stpubdata"}, "output": {"url": "s3://mirror-out/catalogs"},
        "executor": {"kind": "lambda", "function": "sep-prod"},
        "lambda": {"architecture": "x86_64", "memory_mb": 1536, "timeout_seconds": 90,
                   "role_arn": "arn:aws:iam::123456789012:role/sep", "async_retries": 1,
                   "reserved_concurrency": 200}})
    spec = function_spec(config)
    assert (spec.name, spec.architecture, spec.memory_mb, spec.timeout_seconds) == (
        "sep-prod", "x86_64", 1536, 90)
    assert spec.environment == handler_env(config) == {
        "MASTMIRROR_ALLOWED_BUCKETS": "stpubdata",
        "MASTMIRROR_ALLOWED_OUTPUTS": "s3://mirror-out/catalogs",
        "MASTMIRROR_ARCHIVE_ANONYMOUS": "1"}
    assert (spec.async_retries, spec.reserved_concurrency) == (1, 200)
    assert spec.concurrency == config.executor.concurrency  # what the deploy checks against
    assert function_spec(config, reserved_concurrency=7).reserved_concurrency == 7
    no_reservation = config.model_copy(update={"lambda_": config.lambda_.model_copy(
        update={"reserved_concurrency": 0})})
    assert function_spec(no_reservation).reserved_concurrency is None


def test_cli_deploy(moto_lambda: str, role_arn: str, tmp_path: Path) -> None:
    config = deploy_config(tmp_path, role_arn, f"sep-cli-{uuid.uuid4().hex[:6]}")
    runner = CliRunner()
    out = runner.invoke(main, ["--config", str(config), "lambda", "deploy"])
    assert out.exit_code == 0, out.output
    assert "created arn:aws:lambda:" in out.stdout and "CodeSha256" in out.stdout
    # moto (5.x) has no GetAccountSettings: the deploy goes through and says it could not tell.
    assert "warning: could not read the account's Lambda concurrency" in out.stderr
    again = runner.invoke(main, ["--config", str(config), "lambda", "deploy"])
    assert again.exit_code == 0 and "nothing to change" in again.stdout
    config.write_text(config.read_text().replace(f'role_arn = "{role_arn}"', 'role_arn = ""'))
    bad = runner.invoke(main, ["--config", str(config), "lambda", "deploy"])
    assert bad.exit_code == 2 and "role_arn is empty" in bad.stderr


def test_waits_for_a_role_created_moments_ago(moto_lambda: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.exceptions
    from lambda_helpers import ROLE_TRUST

    monkeypatch.setattr(dep, "ROLE_RETRY_S", 0.2)
    monkeypatch.setattr(dep, "ROLE_PROPAGATION_S", 20.0)
    name = f"late-role-{uuid.uuid4().hex[:6]}"
    arn = f"arn:aws:iam::123456789012:role/{name}"
    iam = boto3.client("iam")
    messages: list[str] = []

    def progress(message: str) -> None:
        # The role appears once deploy has been refused for it, as IAM propagation looks to
        # Lambda (tied to the refusal, not to a clock: a loaded machine cannot outrun it).
        if "IAM propagation" in message and not any("IAM propagation" in m for m in messages):
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(ROLE_TRUST))
        messages.append(message)

    report = deploy(_spec(arn), tiny_bundle(tmp_path / "v1.zip"), progress=progress)
    assert report.created
    assert any("IAM propagation" in m for m in messages)
    # A role that never appears: the error comes through once the patience runs out.
    monkeypatch.setattr(dep, "ROLE_PROPAGATION_S", 0.5)
    with pytest.raises(botocore.exceptions.ClientError, match="cannot be assumed"):
        deploy(_spec("arn:aws:iam::123456789012:role/never"), tiny_bundle(tmp_path / "v2.zip"))
