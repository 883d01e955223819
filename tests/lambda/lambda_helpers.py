"""Helpers shared by the Lambda tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lambda_sep.contract import function_env, make_event

REPO = Path(__file__).resolve().parents[2]
FUNCTION = "mastmirror-sep"
ROLE_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


def machine_arch() -> str:
    """This machine's architecture in Lambda's words."""
    return "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"


def running_python() -> str:
    """``X.Y`` of the interpreter running the tests."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


_SKIP_INFO = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _wheel_tag(wheel_text: str) -> str:
    tags = [line.split(":", 1)[1].strip() for line in wheel_text.splitlines()
            if line.startswith("Tag:")]
    parts = [t.split("-") for t in tags]
    py, abi, plat = (sorted({p[i] for p in parts}) for i in range(3))
    return f"{'.'.join(py)}-{'.'.join(abi)}-{'.'.join(plat)}"


def repack_installed(name: str, dest: Path) -> Path:
    """Pack the installed distribution ``name`` back into a wheel in ``dest``."""
    dist = importlib.metadata.distribution(name)
    info_dir = next(str(f).split("/")[0] for f in dist.files or ()
                    if str(f).split("/")[0].endswith(".dist-info"))
    wheel_text = dist.read_text("WHEEL") or ""
    stem = info_dir.removesuffix(".dist-info")  # normalised name-version, as pip wrote it
    out = dest / f"{stem}-{_wheel_tag(wheel_text)}.whl"
    record: list[str] = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted(dist.files or (), key=str):
            rel = str(f)
            top, _, leaf = rel.partition("/")
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
                continue  # console scripts outside site-packages, bytecode caches
            if top == info_dir and leaf in _SKIP_INFO:
                continue
            data = Path(dist.locate_file(f)).read_bytes()
            zf.writestr(rel, data)
            record.append(f"{rel},{_record_hash(data)},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return out


def lambda_wheelhouse(python_version: str, architecture: str) -> Path | None:
    """A wheelhouse of the published wheels for another Python, when set-up fetched one.

    ``./dev`` runs ``python -m daemon.lambda_bundle download .venv/wheelhouse``, which fills
    ``.venv/wheelhouse/py3.12-<arch>``; ``MASTMIRROR_LAMBDA_WHEELHOUSE`` points elsewhere.
    """
    env = os.environ.get("MASTMIRROR_LAMBDA_WHEELHOUSE")
    candidates = [Path(env)] if env else []
    candidates.append(REPO / ".venv" / "wheelhouse" / f"py{python_version}-{architecture}")
    for c in candidates:
        if c.is_dir() and any(c.glob("numpy-*.whl")):
            return c
    return None


@dataclass(frozen=True)
class Archive:
    """A file:// archive laid out like the bucket, and the key of one exposure in it."""

    root: Path
    obs_id: str
    key: str
    sources: int

    @property
    def url(self) -> str:
        """The archive as a store URL."""
        return f"file://{self.root}"

    def event(self, output: Path, attempt: int = 1) -> dict[str, object]:
        """The event the daemon would send for this exposure."""
        return make_event(obs_id=self.obs_id, bucket=self.url, key=self.key,
                          output=f"file://{output}", sep={}, attempt=attempt)

    def env(self, output: Path) -> dict[str, str]:
        """The function's allow-lists for this archive and ``output``."""
        return function_env(self.url, f"file://{output}")


def moto_post(url: str, path: str, body: bytes) -> bytes:
    """POST to moto's own API (configuration, auth switches)."""
    req = urllib.request.Request(f"{url}{path}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def tiny_bundle(path: Path, marker: str = "v1") -> Path:
    """A small zip shaped like a bundle (deploy checks for the entry point only)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("lambda_sep/__init__.py", "")
        zf.writestr("lambda_sep/handler.py",
                    f"def handler(event, context):\n    return {{'marker': {marker!r}}}\n")
    return path


def policy_json(doc: dict[str, object]) -> str:
    """A policy document as IAM takes it."""
    return json.dumps(doc)


def explode(event: object, context: object) -> None:
    """A function that fails unhandled (the stand-in's Unhandled path)."""
    raise RuntimeError(f"boom: {event!r}")


def deploy_config(root: Path, role_arn: str, function: str, *, executor: str = "") -> Path:
    """A config.toml for `lambda deploy` under ``root``, with a tiny bundle beside it;
    ``executor``: more ``[executor]`` lines."""
    (root / "build").mkdir(exist_ok=True)
    tiny_bundle(root / "build" / "bundle.zip")
    config = root / "config.toml"
    config.write_text(
        '[archive]\nbucket = "stpubdata"\n[output]\nurl = "s3://mirror-out/catalogs"\n'
        f'[executor]\nkind = "lambda"\nfunction = "{function}"\n{executor}'
        f'[lambda]\nrole_arn = "{role_arn}"\nbundle = "build/bundle.zip"\n')
    return config
