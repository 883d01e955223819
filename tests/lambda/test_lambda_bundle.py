"""``mastmirror lambda build``: pins from the lock, stripping, a deterministic zip, and a
bundle whose handler imports and runs in an interpreter that sees nothing but the bundle."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from astropy.io import fits
from click.testing import CliRunner
from lambda_helpers import REPO, Archive, lambda_wheelhouse, machine_arch, running_python

import lambda_sep
from daemon import lambda_bundle as bundle
from daemon.cli import main
from daemon.lambda_bundle import (
    BundleError,
    build_bundle,
    bundle_pins,
    check_limits,
    find_lock,
    parse_lock,
    platform_tags,
    strip_tree,
    write_zip,
)

CLOSURE = {"astropy", "astropy-iers-data", "numpy", "packaging", "pyerfa", "pyyaml", "sep"}
SDK = {"boto3", "botocore", "jmespath", "python-dateutil", "s3transfer", "six", "urllib3"}

# Runs inside the bundle's interpreter (-I -S: no site-packages, no PYTHON* variables, no
# current directory on sys.path): the bundle goes first on sys.path, as /var/task on Lambda.
PROBE = r"""
import importlib.metadata, json, sys
bundle, event = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, bundle)
import numpy, astropy, erfa, yaml, sep, boto3, botocore
from lambda_sep.handler import handler

class Context:
    aws_request_id = "bundle-test"
    function_name = "mastmirror-sep"
    memory_limit_in_mb = 1024
    def get_remaining_time_in_millis(self):
        return 60000

summary = handler(event, Context())
mods = {m.__name__: m.__file__ for m in (numpy, astropy, erfa, yaml, sep, boto3, botocore,
                                         sys.modules["lambda_sep.handler"])}
print("PROBE " + json.dumps({"modules": mods, "path": sys.path, "summary": summary,
      "python": "%d.%d" % sys.version_info[:2], "site": "site" in sys.modules,
      "version": importlib.metadata.version("mastmirror")}))
"""


# -- the lock and the platform -----------------------------------------------------------

def test_pins_are_the_runtime_closure_from_the_lock() -> None:
    pins = parse_lock(find_lock().read_text())
    got = {p.name: p for p in bundle_pins(pins, python_version="3.12", architecture="arm64")}
    assert set(got) == CLOSURE | SDK
    # The universal lock has one numpy per Python: the marker picks the runtime's.
    assert got["numpy"].version == "2.5.5"
    assert {p.version for p in bundle_pins(pins, python_version="3.11",
                                           architecture="x86_64") if p.name == "numpy"} == {
        "2.4.6"}
    assert all(p.hashes and all(h.startswith("sha256:") for h in p.hashes) for p in got.values())
    no_sdk = {p.name for p in bundle_pins(pins, python_version="3.12", architecture="arm64",
                                          include_boto3=False)}
    assert no_sdk == CLOSURE


def test_lock_without_a_root_is_refused() -> None:
    pins = [p for p in parse_lock(find_lock().read_text()) if p.name != "sep"]
    with pytest.raises(BundleError, match="no pin for sep"):
        bundle_pins(pins, python_version="3.12", architecture="x86_64")


def test_platform_tags_cover_the_runtime_glibc_only() -> None:
    tags = platform_tags("arm64")
    assert tags[0] == "manylinux_2_34_aarch64"  # Amazon Linux 2023
    assert "manylinux_2_28_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert "manylinux_2_35_aarch64" not in tags
    assert all(t.endswith("_aarch64") for t in tags)
    assert all(t.endswith("_x86_64") for t in platform_tags("x86_64"))


# -- stripping, zipping, limits ----------------------------------------------------------

def _touch(root: Path, rel: str, data: bytes = b"x") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_strip_keeps_what_imports_need(tmp_path: Path) -> None:
    keep = ["astropy/__init__.py", "astropy/tests/runner.py", "astropy/tests/helper.py",
            "astropy/io/fits/hdu/image.py", "numpy/testing/__init__.py",
            "numpy/_core/_multiarray_umath.cpython-312-x86_64-linux-gnu.so",
            "numpy.libs/libscipy_openblas64_-ff651d7f.so", "numpy-2.5.5.dist-info/METADATA",
            "numpy-2.5.5.dist-info/entry_points.txt", "numpy-2.5.5.dist-info/LICENSE.txt",
            "astropy_iers_data/data/Leap_Second.dat", "sep.cpython-312-x86_64-linux-gnu.so"]
    drop = ["astropy/tests/tests/test_runner.py", "astropy/tests/figures/py311.json",
            "astropy/io/fits/tests/data/test0.fits", "numpy/_core/tests/test_api.py",
            "numpy/testing/tests/test_utils.py", "numpy/_core/include/numpy/ndarraytypes.h",
            "numpy/_core/lib/libnpymath.a", "numpy/__init__.pyi", "numpy/__init__.pxd",
            "astropy/__pycache__/version.cpython-312.pyc", "astropy/wcs/src/wcslib.c",
            "numpy-2.5.5.dist-info/RECORD", "numpy-2.5.5.dist-info/INSTALLER",
            "numpy-2.5.5.dist-info/REQUESTED", "bin/f2py", "astropy/conftest.py"]
    for rel in keep + drop:
        _touch(tmp_path, rel)
    files, _ = strip_tree(tmp_path)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(keep)
    assert files == len(drop)
    assert not (tmp_path / "bin").exists()  # emptied folders go too


def test_zip_is_deterministic_and_lambda_readable(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    names = ["z/last.py", "a/first.py", "m/mid.so", "a/b/c.txt"]
    for rel in names:
        _touch(a, rel, rel.encode() * 100)
    for rel in reversed(names):  # other creation order, other times and modes
        _touch(b, rel, rel.encode() * 100)
        os.utime(b / rel, (1_700_000_000, 1_700_000_000))
    (b / "m/mid.so").chmod(0o700)
    za, ua, na = write_zip(a, tmp_path / "a.zip")
    zb, ub, nb = write_zip(b, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert (za, ua, na) == (zb, ub, nb) == (za, sum(len(n) * 100 for n in names), 4)
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {stat.S_IMODE(i.external_attr >> 16) for i in infos} == {0o644}


def test_size_limits() -> None:
    assert check_limits(40_000_000, 200_000_000) == []
    (warning,) = check_limits(60_000_000, 200_000_000)
    assert "50 MB" in warning and "code_s3" in warning
    with pytest.raises(BundleError, match=r"unzips to 262,144,001 bytes.*over Lambda's limit "
                       r"of 262,144,000 bytes.*numpy 90\.0 MB"):
        check_limits(60_000_000, bundle.UNZIPPED_LIMIT + 1, [("numpy", 90_000_000)])


def test_build_fails_clearly_past_the_limit(tmp_path: Path, venv_wheelhouse: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The check runs on the staged tree, before any zip is written; the wheels are left out
    # (install is a no-op here) so the tree is the function code alone.
    monkeypatch.setattr(bundle, "install_wheels", lambda *a, **k: None)
    monkeypatch.setattr(bundle, "UNZIPPED_LIMIT", 1000)
    out = tmp_path / "big.zip"
    with pytest.raises(BundleError, match=r"over Lambda.s limit of 1,000 bytes.*lambda_sep"):
        build_bundle(out, python_version=running_python(), architecture=machine_arch(),
                     wheelhouse=venv_wheelhouse, require_hashes=False)
    assert not out.exists() and not out.with_name("big.zip.part").exists()


def test_hashes_are_checked(tmp_path: Path, venv_wheelhouse: Path) -> None:
    # The repacked wheels are not PyPI's bytes: with hashes on, pip must refuse them.
    with pytest.raises(BundleError, match=r"(?i)hash"):
        build_bundle(tmp_path / "x.zip", python_version=running_python(),
                     architecture=machine_arch(), wheelhouse=venv_wheelhouse)


def test_offline_build_without_a_wheel_says_which(tmp_path: Path, venv_wheelhouse: Path) -> None:
    partial = tmp_path / "wheels"
    shutil.copytree(venv_wheelhouse, partial)
    for whl in partial.glob("sep-*.whl"):
        whl.unlink()
    with pytest.raises(BundleError, match=r"sep==1\.4\.1"):
        build_bundle(tmp_path / "x.zip", python_version=running_python(),
                     architecture=machine_arch(), wheelhouse=partial, require_hashes=False)


def test_wheels_unpack_as_an_installer_lays_them_out(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("demo/__init__.py", "demo-1.0.dist-info/METADATA",
                     "demo-1.0.data/purelib/demo_pure.py", "demo-1.0.data/platlib/demo_c.so",
                     "demo-1.0.data/scripts/demo-tool", "demo-1.0.data/headers/demo.h",
                     "demo-1.0.data/data/share/demo.txt"):
            zf.writestr(name, name)
    root = tmp_path / "root"
    bundle.unpack_wheel(wheel, root)
    got = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert got == ["demo-1.0.dist-info/METADATA", "demo/__init__.py", "demo_c.so",
                   "demo_pure.py"]
    assert (root / "demo_pure.py").read_text() == "demo-1.0.data/purelib/demo_pure.py"
    for bad in ("../escape.py", "/abs.py", "demo/..\\..\\x.py"):
        evil = tmp_path / "evil-1.0-py3-none-any.whl"
        with zipfile.ZipFile(evil, "w") as zf:
            zf.writestr(bad, "x")
        with pytest.raises(BundleError, match="outside the bundle"):
            bundle.unpack_wheel(evil, tmp_path / "evil")
    assert not (tmp_path / "escape.py").exists()


def test_the_lock_is_found_from_an_installed_package(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Installed (not editable), the package sits in site-packages, far from the checkout:
    # run from the checkout, the lock is the current directory's.
    monkeypatch.setattr(bundle, "__file__", str(tmp_path / "site-packages/daemon/x.py"))
    monkeypatch.chdir(REPO)
    assert find_lock() == REPO / "requirements.lock"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError, match="run from the mastmirror checkout, or pass --lock"):
        find_lock()


def test_a_stock_venvs_pip_builds_for_another_python(tmp_path: Path,
                                                     venv_wheelhouse: Path) -> None:
    """``python3 -m venv`` on 3.11 brings pip 23.2, whose ``install --target`` checks
    Requires-Python against 3.11 whatever --python-version says (pypa/pip#12216): the
    bundle's wheels for 3.12 must go in all the same."""
    arch = machine_arch()
    target = "3.12" if running_python() != "3.12" else "3.13"
    wheelhouse = lambda_wheelhouse(target, arch)
    if wheelhouse is None:
        pytest.skip(f"needs the Python {target} wheelhouse ./dev fetches "
                    f"(.venv/wheelhouse/py{target}-{arch})")
    venv = tmp_path / "stock"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)  # ensurepip: offline
    python = str(venv / "bin" / "python")
    # The build needs packaging; installing it from the local wheels leaves pip as it was.
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links",
                    str(venv_wheelhouse), "packaging"], check=True)
    code = ("import sys; from pathlib import Path; from daemon import lambda_bundle as b; "
            "pins = b.bundle_pins(b.parse_lock(b.find_lock().read_text()), "
            f"python_version={target!r}, architecture={arch!r}); "
            f"b.install_wheels(pins, Path(sys.argv[1]), python_version={target!r}, "
            f"architecture={arch!r}, wheelhouse=Path({str(wheelhouse)!r}))")
    out = tmp_path / "tree"
    proc = subprocess.run([python, "-c", code, str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True,
                         text=True).stdout.split()[1]
    assert proc.returncode == 0, f"pip {pip}: {proc.stderr[-2000:]}"
    tag = f"cp{target.replace('.', '')}"
    assert list(out.glob(f"numpy/_core/_multiarray_umath.{'cpython-' + tag[2:]}-*.so"))
    assert list(out.glob("numpy-*.dist-info/METADATA"))


# -- the real bundle ---------------------------------------------------------------------

def _isolated_python(version: str) -> str | None:
    """The real executable of a Python ``version`` that is not this venv's (so -S leaves
    only the standard library): ``python<version>`` on PATH, else one pyenv installed (its
    shims answer only for the active versions)."""
    if version == running_python():
        return getattr(sys, "_base_executable", sys.executable)
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        if root:
            candidates += sorted(str(p) for p in Path(root).glob(
                f"versions/{version}*/bin/python{version}"))
    # The interpreter says what it is and where it really lives (a shim or a venv's python
    # would not run with the bare environment the bundle test gives it).
    probe = "import sys; print('%d.%d' % sys.version_info[:2], sys._base_executable)"
    for candidate in candidates:
        if not candidate:
            continue
        out = subprocess.run([candidate, "-c", probe], capture_output=True, text=True)
        found = out.stdout.split()
        if out.returncode == 0 and len(found) == 2 and found[0] == version:
            return found[1]
    return None


def _entries(path: Path) -> list[tuple[str, int, int]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, i.CRC, i.file_size) for i in zf.infolist()]


def _check_zip(path: Path, report: bundle.BundleReport) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names)
    assert "lambda_sep/handler.py" in names and "lambda_sep/__init__.py" in names
    # The function's package whole, and nothing else of this repository.
    package = Path(lambda_sep.__file__).parent
    assert {n for n in names if n.startswith("lambda_sep/")} == {
        f"lambda_sep/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")}
    assert not [n for n in names if n.split("/")[0] in ("daemon", "state", "standin")]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyi", ".h"))]
    assert not [n for n in names if n.startswith("bin/") or n.endswith(".dist-info/RECORD")]
    tests = [n for n in names if "/tests/" in n]
    assert tests and {n.rsplit("/", 1)[0] for n in tests} == {"astropy/tests"}
    assert any(n.startswith("numpy-") and n.endswith(".dist-info/METADATA") for n in names)
    assert report.unzipped_bytes == sum(i.file_size for i in infos)
    assert report.zipped_bytes == path.stat().st_size
    assert report.files == len(infos)
    assert report.unzipped_bytes < bundle.UNZIPPED_LIMIT


def _run_in_bundle(path: Path, python: str, archive: Archive, tmp: Path) -> dict:
    root = tmp / "var-task"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(root)
    out = tmp / "catalogs"
    out.mkdir()
    home = tmp / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "TZ": "UTC",
           **archive.env(out)}
    # -B: Lambda's code directory is read-only, so no bytecode is written there either.
    proc = subprocess.run([python, "-I", "-S", "-B", "-c", PROBE, str(root),
                           json.dumps(archive.event(out))],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(s for s in proc.stdout.splitlines() if s.startswith("PROBE "))
    result = json.loads(line.removeprefix("PROBE "))
    for name, file in result["modules"].items():
        assert file.startswith(str(root) + "/"), f"{name} imported from {file}, not the bundle"
    assert not result["site"]
    assert not [p for p in result["path"] if "site-packages" in p or ".venv" in p]
    assert not list(root.rglob("__pycache__"))
    summary = result["summary"]
    assert summary["status"] == "done", summary
    assert summary["sources"] > archive.sources // 2
    with fits.open(out / summary["output_key"]) as hdul:
        assert hdul[1].header["NAXIS2"] == summary["sources"]
    result["catalogs"] = out
    return result


def test_bundle_runs_the_handler_with_nothing_but_itself(tmp_path: Path, venv_wheelhouse: Path,
                                                         flt_archive: Archive) -> None:
    version, arch = running_python(), machine_arch()
    python = _isolated_python(version)
    assert python is not None
    zip_path = tmp_path / "build" / "mastmirror-sep.zip"
    result = CliRunner().invoke(main, [
        "--config", str(_config(tmp_path, arch)), "lambda", "build", "--wheelhouse",
        str(venv_wheelhouse), "--no-hashes", "--python-version", version, "-o", str(zip_path)])
    assert result.exit_code == 0, result.output
    assert f"for python{version} on {arch}" in result.output
    assert "MB zipped" in result.output and "MB unzipped" in result.output
    # A second build from the same inputs installs the same files (stored uncompressed to
    # save time; that the zip of equal trees is byte-identical is tested above).
    again = build_bundle(tmp_path / "again.zip", python_version=version, architecture=arch,
                         wheelhouse=venv_wheelhouse, require_hashes=False, compresslevel=0)
    assert _entries(again.path) == _entries(zip_path)
    _check_zip(zip_path, dataclasses.replace(again, zipped_bytes=zip_path.stat().st_size))
    assert f"numpy=={importlib.metadata.version('numpy')}" in again.pins
    probe = _run_in_bundle(zip_path, python, flt_archive, tmp_path)
    assert probe["python"] == version
    assert probe["version"] == lambda_sep.__version__ != "0+unknown"


def test_bundle_for_the_runtime_python(tmp_path: Path, flt_archive: Archive) -> None:
    """The Lambda runtime's Python (3.12), from the published wheels, hashes checked."""
    arch = machine_arch()
    python = _isolated_python("3.12")
    wheelhouse = lambda_wheelhouse("3.12", arch)
    if python is None:
        pytest.skip("needs a Python 3.12 interpreter: none is on PATH (python3.12) or "
                    "installed by pyenv")
    if wheelhouse is None:
        pytest.skip("needs the Python 3.12 wheelhouse ./dev fetches "
                    f"(.venv/wheelhouse/py3.12-{arch})")
    report = build_bundle(tmp_path / "py312.zip", python_version="3.12", architecture=arch,
                          wheelhouse=wheelhouse, compresslevel=1)
    assert "numpy==2.5.5" in report.pins
    _check_zip(report.path, report)
    probe = _run_in_bundle(report.path, python, flt_archive, tmp_path)
    assert probe["python"] == "3.12"


def _config(tmp_path: Path, arch: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[lambda]\narchitecture = "{arch}"\n')
    return path
