"""``mastmirror lambda build | deploy | policy``: the bundle, the function, its IAM policies.

A thin shell: the work is in ``daemon.lambda_bundle`` and ``daemon.lambda_deploy``; this module
turns ``config.toml`` into their arguments (the function's environment comes from
``daemon.config.handler_env``, the same allow-lists the local pool runs with).

Exit codes as for the other commands: 0 success, 1 the work failed, 2 bad usage or config.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import click

if TYPE_CHECKING:  # the CLI imports this module; `status` must not pay for pydantic
    from daemon.config import Config

EXIT_FAILED, EXIT_CONFIG = 1, 2


class _HasConfig(Protocol):
    @property
    def config(self) -> Config: ...


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"mastmirror: error: {message}", err=True)
    sys.exit(code)


@click.group("lambda")
def lambda_group() -> None:
    """Build, deploy and describe the AWS Lambda extraction function."""


# -- build -------------------------------------------------------------------------------

def _machine_arch() -> str:
    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


@lambda_group.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="The zip to write (default: [lambda] bundle).")
@click.option("--arch", "architecture", type=click.Choice(["x86_64", "arm64"]),
              help="Target architecture (default: [lambda] architecture).")
@click.option("--python-version", metavar="X.Y",
              help="Target Python (default: the version of [lambda] runtime).")
@click.option("--wheelhouse", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Build offline from the wheels in DIR (pip --no-index --find-links DIR).")
@click.option("--hashes/--no-hashes", "require_hashes", default=True, show_default=True,
              help="Check every wheel against the lock file's hashes; --no-hashes accepts "
                   "wheels built locally (not byte-identical to the published ones).")
@click.option("--boto3/--no-boto3", "include_boto3", default=True, show_default=True,
              help="Bundle the locked boto3/botocore rather than use the runtime's.")
@click.option("--lock", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The lock file with the pins (default: the repository's requirements.lock).")
@click.pass_obj
def build(obj: _HasConfig, *, output: Path | None, architecture: str | None,
          python_version: str | None, wheelhouse: Path | None, require_hashes: bool,
          include_boto3: bool, lock: Path | None) -> None:
    """Build the deployment zip from manylinux wheels (no Docker)."""
    from daemon import lambda_bundle as bundle

    lam = obj.config.lambda_
    try:
        version = python_version or bundle.runtime_python_version(lam.runtime)
        report = bundle.build_bundle(
            output or Path(lam.bundle), python_version=version,
            architecture=architecture or lam.architecture, lock=lock, wheelhouse=wheelhouse,
            require_hashes=require_hashes, include_boto3=include_boto3,
            progress=lambda m: click.echo(m, err=True))
    except bundle.BundleError as exc:
        _fail(str(exc))
    for line in bundle.describe(report):
        click.echo(line)
    if version != bundle.runtime_python_version(lam.runtime):
        click.echo(f"note: built for Python {version}, but [lambda] runtime is {lam.runtime}")


# -- policy ------------------------------------------------------------------------------

def _region_account(config: Config, region: str | None,
                    account: str | None) -> tuple[str, str]:
    """Region and account for the policy ARNs: options, then the function or role ARN and
    the standard AWS configuration (read locally, no request), else ``*``."""
    from daemon.lambda_deploy import arn_region_account, configured_region

    fn_region, fn_account = arn_region_account(config.executor.function)
    role = config.lambda_.role_arn.split(":")
    role_account = role[4] if len(role) > 4 and role[0] == "arn" else None
    if region is None:
        region = fn_region or configured_region()
    return region or "*", account or fn_account or role_account or "*"


@lambda_group.command()
@click.option("--trust", "which", flag_value="trust",
              help="The execution role's trust policy instead.")
@click.option("--daemon", "which", flag_value="daemon",
              help="The daemon's policy (invoke the function, read the results) instead.")
@click.option("--region", help="Region in the ARNs (default: the function ARN's or the AWS "
              "configuration's, else *).")
@click.option("--account", help="Account id in the ARNs (default: from the function or role "
              "ARN, else *).")
@click.pass_obj
def policy(obj: _HasConfig, *, which: str | None, region: str | None,
           account: str | None) -> None:
    """Print the least-privilege IAM policy of the function's execution role (JSON)."""
    from daemon import lambda_deploy as deploy

    config = obj.config
    try:
        if which == "trust":
            doc = deploy.trust_policy()
        else:
            region, account = _region_account(config, region, account)
            if which == "daemon":
                doc = deploy.daemon_policy(function=config.executor.function,
                                           output_url=config.output_url, region=region,
                                           account=account)
            else:
                doc = deploy.execution_role_policy(
                    archive_bucket=config.archive.bucket, output_url=config.output_url,
                    function=config.executor.function, region=region, account=account,
                    anonymous=config.archive.anonymous)
    except deploy.DeployConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    click.echo(json.dumps(doc, indent=2))
    if which != "trust" and not config.output_url.startswith("s3://"):
        click.echo(f"note: [output] url is {config.output_url}, not S3: no output statement "
                   "(the function can write catalogs only to s3://bucket/prefix)", err=True)


# -- deploy ------------------------------------------------------------------------------

def function_spec(config: Config, *, reserved_concurrency: int | None = None) -> Any:
    """The ``daemon.lambda_deploy.FunctionSpec`` that ``config`` describes."""
    from daemon.config import handler_env
    from daemon.lambda_deploy import DeployConfigError, FunctionSpec, function_name
    from lambda_sep import __version__

    if not config.output_url.startswith("s3://"):
        raise DeployConfigError(f"[output] url = {config.output_url!r}: a Lambda function can only "
                          "write to S3; set it to s3://bucket/prefix")
    if config.archive.bucket.startswith("file://"):
        raise DeployConfigError(f"[archive] bucket = {config.archive.bucket!r}: a Lambda function "
                          "reads the archive from S3; set it to the bucket name")
    lam = config.lambda_
    reserved = reserved_concurrency if reserved_concurrency is not None else (
        lam.reserved_concurrency or None)
    return FunctionSpec(
        name=function_name(config.executor.function), runtime=lam.runtime,
        architecture=lam.architecture, memory_mb=lam.memory_mb,
        timeout_seconds=lam.timeout_seconds, role_arn=lam.role_arn,
        environment=handler_env(config), async_retries=lam.async_retries,
        max_event_age_seconds=lam.max_event_age_seconds,
        log_retention_days=lam.log_retention_days, reserved_concurrency=reserved,
        concurrency=config.executor.concurrency if config.executor.kind == "lambda" else 0,
        description=f"mastmirror {__version__}: SEP source extraction of HST exposures")


@lambda_group.command()
@click.option("--bundle", "bundle_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The zip to deploy (default: [lambda] bundle).")
@click.option("--reserved-concurrency", type=click.IntRange(min=1),
              help="Reserve this much concurrency (default: [lambda] reserved_concurrency).")
@click.pass_obj
def deploy(obj: _HasConfig, *, bundle_path: Path | None,
           reserved_concurrency: int | None) -> None:
    """Create or update the function and its asynchronous-invocation settings."""
    from daemon import lambda_deploy as dep

    config = obj.config
    try:
        spec = function_spec(config, reserved_concurrency=reserved_concurrency)
        report = dep.deploy(spec, bundle_path or Path(config.lambda_.bundle),
                            code_store=config.lambda_.code_s3 or None,
                            progress=lambda m: click.echo(m, err=True))
    except dep.DeployConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except dep.DeployError as exc:
        _fail(str(exc))
    except dep.AWS_ERRORS as exc:
        _fail(f"AWS refused the deployment: {exc}")
    click.echo(f"{report.function_arn}: " + "; ".join(report.actions))
    click.echo(f"CodeSha256 {report.code_sha256} ({report.code_location})")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    if config.executor.kind != "lambda":
        click.echo('note: [executor] kind is "local"; set kind = "lambda" for the daemon to '
                   "use the function")
