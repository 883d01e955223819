"""Shared fixtures: a moto S3 server, a MAST stand-in over a synthetic archive, a config.

Everything binds to 127.0.0.1. The real clients are used: boto3 against moto, astroquery
against the MAST stand-in, the real handler in the local process pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Pipeline, open_pipeline
from moto.server import ThreadedMotoServer

_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server (S3, IAM, Lambda...) on loopback for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every boto3 client of this process (and its children) at the moto server."""
    for k, v in _AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    for k in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
              "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    return moto_url


@pytest.fixture
def pipeline(tmp_path: Path, aws: str) -> Iterator[Pipeline]:
    """A small archive: 6 exposures released in 2024, files in a fresh bucket."""
    with open_pipeline(tmp_path, aws) as p:
        yield p
