"""Test harness shared by the integration tests: a synthetic archive in S3 and MAST."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from daemon.config import load_config
from daemon.service import CycleSummary, Service
from standin.archive import Archive, Exposure
from standin.flt import make_flt
from standin.mast import MastStandin

_FLT_CACHE: dict[str, bytes] = {}


def flt_bytes(dataset: str) -> bytes:
    """A synthetic FLT for a dataset, made once per test process (seeded by its name)."""
    if dataset not in _FLT_CACHE:
        seed = int.from_bytes(dataset.encode(), "little") % (2**31)
        # Fewer sources than the science tests use: the pipeline tests check plumbing
        # and that bright injected sources come back, quickly.
        data, _ = make_flt(dataset, seed=seed, n_stars=40, n_galaxies=40)
        _FLT_CACHE[dataset] = data
    return _FLT_CACHE[dataset]


def truth_of(dataset: str) -> object:
    """The injected sources of ``flt_bytes(dataset)``."""
    seed = int.from_bytes(dataset.encode(), "little") % (2**31)
    return make_flt(dataset, seed=seed, n_stars=40, n_galaxies=40)[1]


@dataclass
class Pipeline:
    """An archive in S3, MAST serving it, and a config.toml pointing at both."""

    root: Path
    archive: Archive
    mast: MastStandin
    bucket: str
    endpoint: str
    config_path: Path
    uploaded: set[str] = field(default_factory=set)

    @property
    def output_dir(self) -> Path:
        return self.root / "catalogs"

    def s3(self) -> object:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def upload(self, exposures: list[Exposure] | None = None, *,
               content: dict[str, bytes] | None = None) -> None:
        """Put the FLT of each exposure (or the given bytes) at its archive key."""
        s3 = self.s3()
        exposures = self.archive.exposures() if exposures is None else exposures
        content = content or {}
        for e in exposures:
            if e.dataset in self.uploaded:
                continue
            body = content.get(e.dataset) or flt_bytes(e.dataset)
            s3.put_object(Bucket=self.bucket, Key=e.key, Body=body)  # type: ignore[attr-defined]
            self.uploaded.add(e.dataset)

    def release(self, n: int) -> list[Exposure]:
        """Make n more exposures public (and put their files in the bucket)."""
        new = self.archive.release(n)
        self.upload(new)
        return new

    def run_once(self) -> CycleSummary:
        """``mastmirror run --once`` in this process: one Service, one cycle, closed."""
        service = Service(load_config(self.config_path), config_path=self.config_path)
        service.open()
        try:
            return service.run_once()
        finally:
            service.close()

    def write_config(self, **overrides: dict[str, object]) -> Path:
        """config.toml for this pipeline; ``overrides`` replace keys, section by section."""
        sections: dict[str, dict[str, object]] = {
            "mast": {"url": self.mast.url, "since": "2024-01-01", "window_days": 120.0},
            "archive": {"bucket": self.bucket, "recheck_seconds": 0.0},
            "output": {"url": "catalogs"},
            "executor": {"kind": "local", "concurrency": 2, "max_attempts": 2,
                         "timeout_seconds": 120.0, "retry_backoff_seconds": 0.0},
            "state": {"path": "state/mastmirror.db"},
            "log": {"format": "json"},
        }
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        self.config_path.write_text(toml(sections))
        return self.config_path


def toml(sections: dict[str, dict[str, object]]) -> str:
    """A TOML document of flat sections (strings, numbers, booleans)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, str):
                lines.append(f"{key} = {json.dumps(value)}")
            else:
                lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"
