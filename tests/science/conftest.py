"""Fixtures for the lambda_sep tests: synthetic exposures (made once per session), a moto S3
server on loopback, stores and allow-list environments for the handler."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest

from lambda_sep.contract import archive_key
from lambda_sep.extract import Extraction, extract
from lambda_sep.fitsread import Image, read_image
from lambda_sep.params import SepParams
from lambda_sep.storage import FileStore, open_store
from standin.flt import make_drz, make_noise_flt, synthesize_flt

OBS_ID = "icxe15wwq"
KEY = archive_key(OBS_ID)
SEEDS = (11, 12)  # science images: two independent exposures


@dataclass
class Exposure:
    """One synthetic exposure, its truth and noiseless source model, stored in a file store."""

    obs_id: str
    key: str
    data: bytes
    truth: np.ndarray
    model: np.ndarray | None
    store: FileStore

    def read(self) -> Image:
        """Decode it again (extraction works in place on the arrays)."""
        return read_image(self.store, self.key, len(self.data))


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    """A session-wide directory for the synthetic archive (pytest's tmp dirs are per test)."""
    with tempfile.TemporaryDirectory(prefix="lambda_sep_") as d:
        yield Path(d)


def _exposure(root: Path, obs_id: str, data: bytes, truth: np.ndarray, *,
              model: np.ndarray | None, suffix: str = "flt") -> Exposure:
    store = open_store(f"file://{root}")
    key = archive_key(obs_id, suffix)
    store.put_atomic(key, data)
    assert isinstance(store, FileStore)
    return Exposure(obs_id, key, data, truth, model, store)


@pytest.fixture(scope="session")
def exposures(data_dir: Path) -> list[Exposure]:
    """Science exposures with stars and galaxies (S/N 3..500), generated once."""
    out = []
    for i, seed in enumerate(SEEDS):
        obs_id = f"icxe15w{i}q"
        flt = synthesize_flt(obs_id, seed=seed)
        out.append(_exposure(data_dir / "sci", obs_id, flt.data, flt.truth, model=flt.model))
    return out


@pytest.fixture(scope="session")
def exposure(exposures: list[Exposure]) -> Exposure:
    """The first science exposure."""
    return exposures[0]


@pytest.fixture(scope="session")
def noise_exposures(data_dir: Path) -> list[Exposure]:
    """Source-free exposures (sky, noise, defects) with the same noise model."""
    out = []
    for i, seed in enumerate(SEEDS):
        obs_id = f"icxe16w{i}q"
        data = make_noise_flt(obs_id, seed=seed + 1000)
        out.append(_exposure(data_dir / "noise", obs_id, data, np.zeros(0), model=None))
    return out


@pytest.fixture(scope="session")
def drz_exposure(data_dir: Path) -> Exposure:
    """A DRZ-like product (SCI, WHT, CTX)."""
    data, truth = make_drz("icxe15010", seed=21)
    return _exposure(data_dir / "drz", "icxe15010", data, truth, model=None, suffix="drz")


@pytest.fixture(scope="session")
def extractions(exposures: list[Exposure]) -> list[tuple[Image, Extraction]]:
    """Default-parameter extraction of each science exposure (done once)."""
    out = []
    for exp in exposures:
        img = exp.read()
        out.append((img, extract(img, SepParams())))
    return out


# ------------------------------------------------------------------------------ S3 (moto)


@pytest.fixture
def s3(aws: str) -> boto3.client:
    """A boto3 client on the session's moto server (``aws`` points the shared lambda_sep
    client there too, through ``AWS_ENDPOINT_URL``)."""
    return boto3.client("s3", endpoint_url=aws, region_name="us-east-1")


_bucket_counter = iter(range(10**6))


@pytest.fixture
def bucket(s3: boto3.client) -> str:
    """A fresh, empty bucket."""
    name = f"test-{os.getpid()}-{next(_bucket_counter)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_tree(s3: boto3.client) -> Callable[[], dict[str, bytes]]:
    """Snapshot of every object in every bucket: ``bucket/key`` -> bytes."""

    def snap() -> dict[str, bytes]:
        out = {}
        for b in s3.list_buckets()["Buckets"]:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
                for obj in page.get("Contents", ()):
                    body = s3.get_object(Bucket=b["Name"], Key=obj["Key"])["Body"].read()
                    out[f"{b['Name']}/{obj['Key']}"] = body
        return out

    return snap


@pytest.fixture
def file_tree() -> Callable[[Path], dict[str, bytes]]:
    """Snapshot of every file under a directory: relative path -> bytes."""

    def snap(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    return snap
