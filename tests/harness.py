"""Test harness shared by the integration tests: a synthetic archive in S3 and MAST."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from daemon.config import load_config
from daemon.service import CycleSummary, Service
from standin.archive import Archive, Exposure
from standin.demo import make_public
from standin.flt import archive_flt, reprocess_flt
from standin.mast import MastStandin

_FLT_CACHE: dict[tuple[str, str], bytes] = {}


# Fewer sources than the science tests use: the pipeline tests check plumbing and that
# bright injected sources come back, quickly.
_SOURCES = {"n_stars": 40, "n_galaxies": 40}


def flt_bytes(dataset: str, filter: str = "F160W") -> bytes:
    """A synthetic FLT for a dataset, made once per test process (seeded by its name)."""
    if (dataset, filter) not in _FLT_CACHE:
        _FLT_CACHE[dataset, filter] = archive_flt(dataset, filter, **_SOURCES)[0]
    return _FLT_CACHE[dataset, filter]


def truth_of(dataset: str, filter: str = "F160W") -> object:
    """The injected sources of ``flt_bytes(dataset, filter)``."""
    return archive_flt(dataset, filter, **_SOURCES)[1]


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
            body = content.get(e.dataset) or flt_bytes(e.dataset, e.filter)
            s3.put_object(Bucket=self.bucket, Key=e.key, Body=body)  # type: ignore[attr-defined]
            self.uploaded.add(e.dataset)

    def release(self, n: int) -> list[Exposure]:
        """Make n more exposures public (and put their files in the bucket)."""
        new = self.archive.release(n)
        self.upload(new)
        return new

    def reprocess(self, exposures: list[Exposure], *, generation: int = 2) -> dict[str, str]:
        """The archive reprocesses these exposures: new bytes at the same keys (MAST's
        release dates do not change). Returns each dataset's new ETag."""
        s3 = self.s3()
        etags = {}
        for e in exposures:
            body = reprocess_flt(flt_bytes(e.dataset, e.filter), generation=generation)
            resp = s3.put_object(Bucket=self.bucket, Key=e.key, Body=body)  # type: ignore[attr-defined]
            etags[e.dataset] = resp["ETag"].strip('"')
        return etags

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


@dataclass
class ArchiveScenario:
    """What the real archive does that a plain synthetic one does not (issue 10), added to
    a pipeline's archive: each entry as MAST lists it, with MAST's real field values."""

    in_folder: Exposure  # filed under MAST's obs_id, which is not its file's root
    looked_up: Exposure  # obs_id and file root disagree, and the folder is neither: MAST's
    # path lookup alone knows it
    calibration: list[Exposure]  # intentType "calibration"
    grism: list[Exposure]  # G141 and G102: FLT files like any other, OBSTYPE SPECTROSCOPIC
    hap: list[str]  # Hubble Advanced Products names, listed as FLT products
    delayed: Exposure  # listed by MAST; its file reaches the bucket later (upload_delayed)

    @property
    def catalogued(self) -> list[Exposure]:
        """The scenario's exposures mastmirror catalogues (the delayed one once it is there)."""
        return [self.in_folder, self.looked_up, self.delayed]


def add_archive_scenario(p: Pipeline, at_mjd: float = 60410.0) -> ArchiveScenario:
    """Add the scenario's exposures to ``p``'s archive and put every file in the bucket
    except the delayed one's."""
    a = p.archive
    scenario = ArchiveScenario(
        in_folder=a.add_exposure(at_mjd=at_mjd, dataset="ifld01a1q", obs_id="ifld01a1m"),
        # Upper case, as older MAST answers (astroquery's recorded products.json).
        looked_up=a.add_exposure(at_mjd=at_mjd + 1, dataset="ifld02a1q", obs_id="IFLD02A1M",
                                 folder="ifld02a1n"),
        calibration=[a.add_exposure(at_mjd=at_mjd + 2, intent="calibration"),
                     a.add_exposure(at_mjd=at_mjd + 3, intent="calibration", filter="F140W")],
        grism=[a.add_exposure(at_mjd=at_mjd + 4, filter="G141"),
               a.add_exposure(at_mjd=at_mjd + 5, filter="G102")],
        hap=[a.plant_bad("hap", at_mjd=at_mjd + 6, stem=stem).flt_filename for stem in (
            "hst_16514_21_wfc3_ir_f160w_iepo21aaq", "hst_16514_21_wfc3_ir_f160w_iepo21abq")],
        delayed=a.add_exposure(at_mjd=at_mjd + 7),
    )
    p.upload([e for e in a.exposures() if e.dataset != scenario.delayed.dataset])
    return scenario


def upload_delayed(p: Pipeline, scenario: ArchiveScenario) -> None:
    """The delayed exposure's file reaches the bucket (MAST listed it before)."""
    p.upload([scenario.delayed])
@contextlib.contextmanager
def open_pipeline(root: Path, endpoint: str, n: int = 6, *, seed: int = 11
                  ) -> Iterator[Pipeline]:
    """An archive of ``n`` exposures released in 2024, their files in a fresh bucket of the
    S3 server at ``endpoint``, MAST serving it, a config; the working directory is ``root``
    while the block runs."""
    archive = Archive(n, seed=seed, start_mjd=60320.0, end_mjd=60500.0)
    bucket = f"stpubdata-{uuid.uuid4().hex[:8]}"
    # Readable anonymously, as stpubdata is ([archive] anonymous = true).
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    make_public(s3, bucket)
    with MastStandin(archive) as mast:
        p = Pipeline(root=root, archive=archive, mast=mast, bucket=bucket, endpoint=endpoint,
                     config_path=root / "config.toml")
        p.upload()
        p.write_config()
        old = os.getcwd()
        os.chdir(root)
        try:
            yield p
        finally:
            os.chdir(old)
