"""Fixtures for the Lambda tests: an offline wheelhouse, a synthetic archive on disk, moto's
Lambda without Docker, an IAM role, and the Lambda stand-in.

The bundle tests must not download anything. ``pip download`` needs the network, and pip
keeps no reusable wheel files of what it installed, so the wheelhouse is rebuilt from what
``./dev`` already installed in the venv: each installed distribution's files (its RECORD)
are packed back into a wheel with the tags its WHEEL file names (``repack_installed``).
Those wheels are for the running interpreter and machine only, and they are not
byte-identical to PyPI's, so the build under test runs with ``require_hashes=False``;
everything else (pip's ``--platform/--python-version/--only-binary`` selection,
``--target``, stripping, zipping) is the real path.
"""

from __future__ import annotations

import importlib.metadata
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from lambda_helpers import (
    FUNCTION,
    ROLE_TRUST,
    Archive,
    machine_arch,
    moto_post,
    repack_installed,
    running_python,
)

from daemon.lambda_bundle import bundle_pins, find_lock, parse_lock


@pytest.fixture(scope="session")
def venv_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle's pinned distributions, repacked from this venv (running Python, arch)."""
    dest = tmp_path_factory.mktemp("wheelhouse")
    pins = bundle_pins(parse_lock(find_lock().read_text()), python_version=running_python(),
                       architecture=machine_arch())
    for pin in pins:
        installed = importlib.metadata.version(pin.name)
        assert installed == pin.version, (
            f"the venv has {pin.name} {installed}, the lock pins {pin.version}: run ./dev")
        repack_installed(pin.name, dest)
    return dest


@pytest.fixture(scope="session")
def flt_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """One synthetic 1014x1014 WFC3/IR FLT with 40 stars and 40 galaxies, on disk."""
    from lambda_sep.contract import archive_key
    from standin.flt import make_flt

    root = tmp_path_factory.mktemp("archive")
    obs_id = "icxe15wwq"
    key = archive_key(obs_id)
    data, truth = make_flt(obs_id, seed=5, n_stars=40, n_galaxies=40)
    path = root / key
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return Archive(root, obs_id, key, len(truth))


@pytest.fixture
def moto_lambda(aws: str) -> str:
    """moto's Lambda without Docker (``awslambda_simple``), set through moto's config API.

    The setting is per moto process and chooses the backend new functions go to, so it
    is set before any function is created and never turned back on.
    """
    moto_post(aws, "/moto-api/config", json.dumps({"lambda": {"use_docker": False}}).encode())
    return aws


@pytest.fixture
def role_arn(aws: str) -> str:
    """An execution role in moto's IAM (moto's Lambda checks that the role exists)."""
    iam = boto3.client("iam")
    name = f"mastmirror-sep-{uuid.uuid4().hex[:8]}"
    return iam.create_role(RoleName=name,
                           AssumeRolePolicyDocument=json.dumps(ROLE_TRUST))["Role"]["Arn"]


@pytest.fixture
def standin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials to sign with (the stand-in checks that requests are signed)."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA",
              "AWS_SESSION_TOKEN", "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture
def standin(standin_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The Lambda stand-in accepting events without running them; boto3 pointed at it."""
    from standin.awslambda import LambdaStandIn

    s = LambdaStandIn(FUNCTION, run=False).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", s.url)
    try:
        yield s
    finally:
        s.stop()
