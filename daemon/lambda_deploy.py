"""``mastmirror lambda deploy | policy``: the function, its settings and its IAM policies.

Every Lambda, IAM-shaped and CloudWatch Logs call made for deployment lives here (the
daemon's invocations live in ``daemon.lambda_invoke``). This module takes plain values, not
the daemon's configuration: ``daemon.lambda_cli`` builds a ``FunctionSpec`` from
``config.toml``.

Endpoints and credentials come from the standard AWS configuration (environment, profile,
role; ``AWS_ENDPOINT_URL`` points at a local server in tests), never from ``config.toml``.
"""

from __future__ import annotations

import base64
import hashlib
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from daemon.config import LOG_RETENTION_DAYS
from daemon.lambda_bundle import DIRECT_UPLOAD_LIMIT
from daemon.lambda_invoke import capacity_warning, read_capacity
from lambda_sep.contract import ARCHIVE_PREFIX  # the function reads nothing else of the archive

HANDLER = "lambda_sep.handler.handler"
ENTRY_FILE = "lambda_sep/handler.py"
# A role created moments before may not be assumable by Lambda yet: keep trying this long.
ROLE_PROPAGATION_S = 60.0
ROLE_RETRY_S = 3.0

# Deployment calls are few and may hit "update in progress" conflicts or control-plane
# throttling; botocore's standard mode retries those with backoff.
_CLIENT_CONFIG = botocore.config.Config(retries={"mode": "standard", "max_attempts": 6},
                                        connect_timeout=10, read_timeout=120)


#: What botocore raises when AWS refuses a call (after its own retries) or cannot be reached.
AWS_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


class DeployError(Exception):
    """Deployment cannot go on; the message says what to change."""


class DeployConfigError(DeployError):
    """The configuration cannot be deployed as it is (the message names the key)."""


@dataclass(frozen=True)
class FunctionSpec:
    """Everything ``deploy`` sets on the function."""

    name: str
    runtime: str
    architecture: str  # "x86_64" or "arm64"
    memory_mb: int
    timeout_seconds: int
    role_arn: str
    environment: Mapping[str, str]
    async_retries: int
    max_event_age_seconds: int
    log_retention_days: int
    reserved_concurrency: int | None = None  # None: draw from the account's unreserved pool
    concurrency: int = 0  # runs at once the daemon will ask for ([executor] concurrency)
    description: str = "mastmirror SEP source extraction"
    handler: str = HANDLER

    @property
    def log_group(self) -> str:
        """The function's CloudWatch Logs group."""
        return f"/aws/lambda/{self.name}"


@dataclass
class DeployReport:
    """What ``deploy`` did, for the CLI and the tests."""

    function_arn: str = ""
    created: bool = False
    code_updated: bool = False
    config_updated: bool = False
    async_config_updated: bool = False
    concurrency_updated: bool = False
    log_retention_updated: bool = False
    code_sha256: str = ""
    code_location: str = "direct upload"
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the operator should know


# -- names -------------------------------------------------------------------------------

def function_name(name_or_arn: str) -> str:
    """The bare function name of a name or an unqualified function ARN."""
    if not name_or_arn.startswith("arn:"):
        return name_or_arn
    parts = name_or_arn.split(":")
    if len(parts) != 7 or parts[5] != "function":
        raise DeployConfigError(f"{name_or_arn!r} is a qualified or malformed function ARN; "
                          "deploy needs the unqualified function (name or ARN)")
    return parts[6]


def arn_region_account(name_or_arn: str) -> tuple[str | None, str | None]:
    """(region, account) of a function ARN, (None, None) for a bare name."""
    if not name_or_arn.startswith("arn:"):
        return None, None
    parts = name_or_arn.split(":")
    return parts[3], parts[4]


def configured_region() -> str | None:
    """The region the standard AWS configuration names (environment, profile); no request."""
    region: str | None = boto3.session.Session().region_name
    return region


def s3_location(url: str) -> tuple[str, str] | None:
    """(bucket, prefix without slashes) of ``s3://bucket/prefix``; None for file:// or a path."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        return bucket, prefix.strip("/")
    if "://" not in url and "/" not in url and url:
        return url, ""  # a bare bucket name, as [archive] bucket is written
    return None


def _object_arn(bucket: str, prefix: str) -> str:
    return f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"


# -- policies ----------------------------------------------------------------------------

def execution_role_policy(*, archive_bucket: str, output_url: str, function: str,
                          region: str = "*", account: str = "*",
                          anonymous: bool = False) -> dict[str, Any]:
    """The least-privilege policy of the function's execution role.

    Read (only when the archive is read signed, ``anonymous`` false: a private mirror; an
    unsigned read of the public archive is the bucket policy's to allow, not the role's):
    ``s3:GetObject`` on ``<archive>/hst/public/*``, and ``s3:ListBucket`` on the
    archive limited to that prefix: without it S3 answers 403 rather than 404 for an object
    that is not there yet, and the handler could not tell "not in the bucket yet" (worth a
    retry) from "forbidden" (not).
    Write: ``s3:PutObject`` (catalogs and error markers; a catalog is one PUT, so no
    multipart permissions) and ``s3:DeleteObject`` (a success deletes the stale error marker
    of an earlier attempt) under the output prefix only. The handler never reads or lists
    the output store, so it gets neither ``s3:GetObject`` nor ``s3:ListBucket`` there.
    Logs: ``logs:CreateLogStream`` and ``logs:PutLogEvents`` on the function's own log group;
    ``lambda deploy`` creates the group, so the role needs no ``logs:CreateLogGroup``.
    A ``file://`` archive or output (local runs) needs no S3 statement.
    """
    name = function_name(function)
    statements: list[dict[str, Any]] = []
    archive = None if anonymous else s3_location(archive_bucket)
    if archive is not None:
        statements.append({"Sid": "ReadArchiveImages", "Effect": "Allow",
                           "Action": "s3:GetObject",
                           "Resource": _object_arn(archive[0], ARCHIVE_PREFIX.rstrip("/"))})
        statements.append({"Sid": "TellMissingArchiveImages", "Effect": "Allow",
                           "Action": "s3:ListBucket",
                           "Resource": f"arn:aws:s3:::{archive[0]}",
                           "Condition": {"StringLike": {"s3:prefix": [f"{ARCHIVE_PREFIX}*"]}}})
    output = s3_location(output_url)
    if output is not None:
        statements.append({"Sid": "WriteCatalogs", "Effect": "Allow",
                           "Action": ["s3:PutObject", "s3:DeleteObject"],
                           "Resource": _object_arn(*output)})
    statements.append({
        "Sid": "WriteOwnLogs", "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{name}:*"})
    return {"Version": "2012-10-17", "Statement": statements}


def trust_policy() -> dict[str, Any]:
    """The execution role's trust policy: only the Lambda service may assume it."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole"}]}


def daemon_policy(*, function: str, output_url: str, region: str = "*",
                  account: str = "*") -> dict[str, Any]:
    """The daemon's policy: invoke the function, read what Lambda lets it run at once, list
    and read results under the prefix.

    The daemon never writes the output store (the function does), and reads the public
    archive unsigned when it reads it at all (``[archive] anonymous``).
    """
    name = function_name(function)
    fn_region, fn_account = arn_region_account(function)
    fn_arn = f"arn:aws:lambda:{fn_region or region}:{fn_account or account}:function:{name}"
    statements: list[dict[str, Any]] = [{
        "Sid": "InvokeExtraction", "Effect": "Allow", "Action": "lambda:InvokeFunction",
        # The unqualified ARN and its versions/aliases (ARN:qualifier).
        "Resource": [fn_arn, f"{fn_arn}:*"]}, {
        # The in-flight bound is kept within what Lambda can run (daemon.lambda_invoke).
        "Sid": "ReadFunctionConcurrency", "Effect": "Allow",
        "Action": "lambda:GetFunctionConcurrency", "Resource": fn_arn}, {
        # GetAccountSettings has no resource type: IAM grants it on "*" only.
        "Sid": "ReadAccountConcurrency", "Effect": "Allow",
        "Action": "lambda:GetAccountSettings", "Resource": "*"}]
    output = s3_location(output_url)
    if output is not None:
        bucket, prefix = output
        listing: dict[str, Any] = {"Sid": "ListResults", "Effect": "Allow",
                                   "Action": "s3:ListBucket",
                                   "Resource": f"arn:aws:s3:::{bucket}"}
        if prefix:
            listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
        statements.append(listing)
        statements.append({"Sid": "ReadResults", "Effect": "Allow", "Action": "s3:GetObject",
                           "Resource": _object_arn(bucket, prefix)})
    return {"Version": "2012-10-17", "Statement": statements}


# -- deploy ------------------------------------------------------------------------------

def _client(service: str) -> Any:
    # A session per client: creating clients from the default session is not thread-safe.
    return boto3.session.Session().client(service, config=_CLIENT_CONFIG)


def code_sha256(data: bytes) -> str:
    """Lambda's ``CodeSha256``: the base64 SHA-256 of the zip."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def check_bundle(path: Path) -> bytes:
    """Read the zip and check it holds the entry point; returns its bytes."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DeployError(f"{path}: no bundle there; run `mastmirror lambda build` first "
                          "([lambda] bundle names the file)") from None
    try:
        with zipfile.ZipFile(path) as zf:
            if ENTRY_FILE not in zf.namelist():
                raise DeployError(f"{path}: not a mastmirror bundle ({ENTRY_FILE} missing)")
    except zipfile.BadZipFile as exc:
        raise DeployError(f"{path}: not a zip file ({exc})") from None
    return data


def _validate(spec: FunctionSpec) -> None:
    if not spec.role_arn:
        raise DeployConfigError("[lambda] role_arn is empty: create the execution role first "
                          "(`mastmirror lambda policy` and `--trust` print its two policies)")
    if spec.log_retention_days not in LOG_RETENTION_DAYS:
        raise DeployConfigError(f"[lambda] log_retention_days = {spec.log_retention_days}: "
                          "CloudWatch Logs accepts only "
                          + ", ".join(map(str, LOG_RETENTION_DAYS)))
    if spec.reserved_concurrency is not None and spec.reserved_concurrency < 1:
        raise DeployConfigError("reserved concurrency must be at least 1 (0 would stop every "
                          "invocation); leave it unset for none")


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _wait(lambda_client: Any, waiter: str, name: str, delay: float) -> None:
    """Wait until the function is Active / its last update Successful."""
    try:
        lambda_client.get_waiter(waiter).wait(
            FunctionName=name,
            WaiterConfig={"Delay": max(1, round(delay)), "MaxAttempts": int(600 / max(1, delay))})
    except botocore.exceptions.WaiterError as exc:
        last = getattr(exc, "last_response", {}) or {}
        cfg = last.get("Configuration", last)
        reason = cfg.get("LastUpdateStatusReason") or cfg.get("StateReason") or str(exc)
        raise DeployError(f"function {name} did not become ready: {reason}") from None


def _code_argument(data: bytes, name: str, code_store: str | None,
                   report: DeployReport) -> dict[str, Any]:
    """ZipFile in the request, or S3Bucket/S3Key after staging the zip in ``code_store``."""
    if code_store is None:
        if len(data) > DIRECT_UPLOAD_LIMIT:
            raise DeployConfigError(f"the bundle is {len(data) / 1e6:.1f} MB, over the 50 MB a "
                              "direct upload allows: set [lambda] code_s3 = "
                              "\"s3://bucket/prefix\" to stage it in S3")
        return {"ZipFile": data}
    location = s3_location(code_store)
    if location is None or not code_store.startswith("s3://"):
        raise DeployConfigError(f"[lambda] code_s3 = {code_store!r}: expected s3://bucket/prefix")
    # Object storage is touched only through lambda_sep.storage; the key carries the hash,
    # so a staged zip is never overwritten with different bytes.
    from lambda_sep.storage import open_store

    key = f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.zip"
    store = open_store(code_store)
    store.put_atomic(key, data, content_type="application/zip")
    bucket, prefix = location
    s3_key = f"{prefix}/{key}" if prefix else key
    report.code_location = f"s3://{bucket}/{s3_key}"
    report.actions.append(f"staged the zip at {report.code_location}")
    return {"S3Bucket": bucket, "S3Key": s3_key}


def deploy(spec: FunctionSpec, bundle: Path, *, lambda_client: Any = None,
           logs_client: Any = None, code_store: str | None = None, wait_delay_s: float = 2.0,
           progress: Callable[[str], None] | None = None) -> DeployReport:
    """Create or update the function from ``bundle`` and converge all its settings.

    Idempotent: a second run with the same bundle and spec changes nothing (the code is
    compared by its SHA-256, the configuration field by field). Between the code update
    and the configuration update it waits for ``LastUpdateStatus: Successful``, as Lambda
    refuses a second update while one is in progress.
    """
    _validate(spec)
    say = progress or (lambda _m: None)
    lam = lambda_client or _client("lambda")
    logs = logs_client or _client("logs")
    data = check_bundle(bundle)
    sha = code_sha256(data)
    report = DeployReport(code_sha256=sha)
    wanted = {"Runtime": spec.runtime, "Role": spec.role_arn, "Handler": spec.handler,
              "MemorySize": spec.memory_mb, "Timeout": spec.timeout_seconds,
              "Description": spec.description,
              "Environment": {"Variables": dict(spec.environment)}}

    # The log group first: the function's first invocation must not create it (the role
    # has no logs:CreateLogGroup), and the retention applies from the first line.
    _ensure_log_group(logs, spec, report)

    try:
        current = lam.get_function(FunctionName=spec.name)["Configuration"]
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        current = None

    if current is None:
        say(f"creating {spec.name}")
        code = _code_argument(data, spec.name, code_store, report)
        resp = _create(lam, dict(FunctionName=spec.name, PackageType="Zip", Code=code,
                                 Architectures=[spec.architecture], Publish=False, **wanted),
                       say)
        report.function_arn = resp["FunctionArn"]
        report.created = report.code_updated = report.config_updated = True
        report.actions.append(f"created {resp['FunctionArn']}")
        _wait(lam, "function_active", spec.name, wait_delay_s)
    else:
        report.function_arn = current["FunctionArn"]
        if current.get("LastUpdateStatus") == "InProgress":
            # An update still running (another deploy) must finish before ours, and what it
            # changed is what ours compares against.
            _wait(lam, "function_updated", spec.name, wait_delay_s)
            current = lam.get_function(FunctionName=spec.name)["Configuration"]
        if current.get("CodeSha256") != sha or current.get("Architectures") != [spec.architecture]:
            say(f"updating the code of {spec.name}")
            lam.update_function_code(
                FunctionName=spec.name, Architectures=[spec.architecture], Publish=False,
                **_code_argument(data, spec.name, code_store, report))
            report.code_updated = True
            report.actions.append(f"updated the code (CodeSha256 {sha})")
            _wait(lam, "function_updated", spec.name, wait_delay_s)
        changed = _config_diff(current, wanted)
        if changed:
            say(f"updating the configuration of {spec.name}: {', '.join(changed)}")
            lam.update_function_configuration(FunctionName=spec.name, **wanted)
            report.config_updated = True
            report.actions.append("updated " + ", ".join(changed))
            _wait(lam, "function_updated", spec.name, wait_delay_s)

    _ensure_async_config(lam, spec, report)
    _ensure_concurrency(lam, spec, report)
    _check_capacity(lam, spec, report)
    if not report.actions:
        report.actions.append("nothing to change")
    return report


def _create(lam: Any, params: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """CreateFunction, waiting out IAM's propagation of a role created moments ago.

    Lambda refuses a role it cannot assume yet ("cannot be assumed by Lambda") for a few
    seconds after the role is created; that is not an error botocore retries.
    """
    deadline = time.monotonic() + ROLE_PROPAGATION_S
    while True:
        try:
            return lam.create_function(**params)
        except botocore.exceptions.ClientError as exc:
            message = str(exc.response.get("Error", {}).get("Message", ""))
            if (_error_code(exc) != "InvalidParameterValueException"
                    or "cannot be assumed" not in message or time.monotonic() > deadline):
                raise
            say("the role is not assumable yet (IAM propagation); retrying")
            time.sleep(ROLE_RETRY_S)


def _config_diff(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    changed = []
    for key, value in wanted.items():
        have = current.get(key)
        if key == "Environment":
            have = {"Variables": (have or {}).get("Variables", {})}
        if key == "Description":
            have = have or ""
        if have != value:
            changed.append(key)
    return changed


def _ensure_log_group(logs: Any, spec: FunctionSpec, report: DeployReport) -> None:
    try:
        logs.create_log_group(logGroupName=spec.log_group)
        report.actions.append(f"created log group {spec.log_group}")
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) != "ResourceAlreadyExistsException":
            raise
    groups = logs.describe_log_groups(logGroupNamePrefix=spec.log_group)["logGroups"]
    have = next((g.get("retentionInDays") for g in groups
                 if g["logGroupName"] == spec.log_group), None)
    if have != spec.log_retention_days:
        logs.put_retention_policy(logGroupName=spec.log_group,
                                  retentionInDays=spec.log_retention_days)
        report.log_retention_updated = True
        report.actions.append(f"log retention {spec.log_retention_days} days")


def _ensure_async_config(lam: Any, spec: FunctionSpec, report: DeployReport) -> None:
    wanted = {"MaximumRetryAttempts": spec.async_retries,
              "MaximumEventAgeInSeconds": spec.max_event_age_seconds}
    try:
        have = lam.get_function_event_invoke_config(FunctionName=spec.name)
    except botocore.exceptions.ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        have = {}
    if all(have.get(k) == v for k, v in wanted.items()):
        return
    # put (not update) replaces the whole setting, so nothing left from elsewhere survives.
    lam.put_function_event_invoke_config(FunctionName=spec.name, **wanted)
    report.async_config_updated = True
    report.actions.append(f"asynchronous invocation: {spec.async_retries} retries, events "
                          f"dropped after {spec.max_event_age_seconds} s")


def _check_capacity(lam: Any, spec: FunctionSpec, report: DeployReport) -> None:
    """Warn when the account (or the reservation) lets Lambda run fewer at once than the
    daemon will ask for: new accounts get far less than the documented 1,000."""
    if spec.concurrency <= 0:
        return
    try:
        capacity = read_capacity(lam, spec.name)
    except AWS_ERRORS as exc:
        report.warnings.append(
            f"could not read the account's Lambda concurrency (GetAccountSettings: {exc}); "
            f"check it can run [executor] concurrency = {spec.concurrency} at once")
        return
    warning = capacity_warning(capacity, spec.concurrency, spec.name)
    if warning is not None:
        report.warnings.append(warning)


def _ensure_concurrency(lam: Any, spec: FunctionSpec, report: DeployReport) -> None:
    have = lam.get_function_concurrency(FunctionName=spec.name).get(
        "ReservedConcurrentExecutions")
    if have == spec.reserved_concurrency:
        return
    if spec.reserved_concurrency is None:
        lam.delete_function_concurrency(FunctionName=spec.name)
        report.actions.append("removed the reserved concurrency")
    else:
        lam.put_function_concurrency(FunctionName=spec.name,
                                     ReservedConcurrentExecutions=spec.reserved_concurrency)
        report.actions.append(f"reserved concurrency {spec.reserved_concurrency}")
    report.concurrency_updated = True

