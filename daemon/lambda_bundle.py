"""``mastmirror lambda build``: the deployment zip for the Lambda Python runtime.

The zip holds the function's runtime dependencies as manylinux wheels chosen by pip's
``--platform``/``--python-version`` options (``pip download``, then unpacked here; no Docker,
no compiler: every dependency ships binary wheels), pinned to the repository's universal
lock file with its hashes, plus the ``lambda_sep`` package itself. What no invocation needs
is stripped (tests, caches, headers, stubs, console scripts, install records), and the
archive is deterministic: the same wheels and sources give the same bytes, so a rebuild that
changes nothing deploys nothing new.

Only the standard library, ``packaging`` and pip (run as ``python -m pip``) are used here.
This build tool lives on the daemon's side, so the bundle takes the ``lambda_sep`` package
whole: everything in it is function code.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from packaging.markers import Marker
from packaging.utils import canonicalize_name

import lambda_sep

# Lambda's documented quotas: the unzipped function (code and layers) may be at most 250 MB
# (262,144,000 bytes); a zip uploaded directly in the API call at most 50 MB, beyond which it
# must be staged in S3.
UNZIPPED_LIMIT = 262_144_000
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024

# What the handler imports at run time. The rest of the closure (pyerfa, astropy-iers-data,
# pyyaml, packaging, botocore, s3transfer, ...) follows from the lock's "# via" graph.
RUNTIME_ROOTS = ("numpy", "astropy", "sep")
SDK_ROOTS = ("boto3",)

# Lambda's Python 3.12+ runtimes run on Amazon Linux 2023, whose glibc is 2.34: any
# manylinux tag up to 2_34 runs there. pip does not expand a manylinux_2_X tag to the older
# ones by itself (it only does so for manylinux2014/2010), so every one is listed.
RUNTIME_GLIBC = (2, 34)
OLDEST_GLIBC_MINOR = 17

# Fixed timestamp of every zip entry (the zip epoch), so builds are byte-for-byte repeatable.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# Suffixes no import at run time needs: bytecode (Lambda's filesystem is read-only, so it
# could not be refreshed anyway and would only be stale), C sources and headers, Cython
# declarations, type stubs, static libraries.
_DROP_SUFFIXES = frozenset({".pyc", ".pyo", ".pyi", ".pyx", ".pxd", ".pxi", ".c", ".h", ".hpp",
                            ".cpp", ".a"})
# Install records that describe the staging directory, not the function.
_DROP_DIST_INFO = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
# Build-time parts of numpy (headers and the static npymath/pkg-config for compiling against it).
_DROP_DIRS = (("numpy", "_core", "include"), ("numpy", "_core", "lib"))

ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}


class BundleError(Exception):
    """The bundle cannot be built (or would not deploy); the message says why."""


@dataclass(frozen=True)
class Pin:
    """One entry of the lock file."""

    name: str
    version: str
    hashes: tuple[str, ...]
    marker: str | None
    via: tuple[str, ...]

    def requirement_line(self, *, with_hashes: bool) -> str:
        """The pip requirements-file line for this pin."""
        line = f"{self.name}=={self.version}"
        if with_hashes:
            line += "".join(f" --hash={h}" for h in self.hashes)
        return line


@dataclass
class BundleReport:
    """What ``build_bundle`` produced."""

    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    python_version: str
    architecture: str
    pins: list[str]
    sha256: str
    stripped_files: int = 0
    stripped_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    largest: list[tuple[str, int]] = field(default_factory=list)


# -- the lock ----------------------------------------------------------------------------

_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def parse_lock(text: str) -> list[Pin]:
    """Parse a ``uv pip compile --generate-hashes`` lock (pins, markers, hashes, via)."""
    pins: list[Pin] = []
    head: re.Match[str] | None = None
    hashes: list[str] = []
    via: list[str] = []

    def flush() -> None:
        if head is not None:
            pins.append(Pin(canonicalize_name(head.group(1)), head.group(2), tuple(hashes),
                            head.group(3), tuple(via)))

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw[0].isspace() and not line.startswith("#"):
            m = _PIN_RE.match(line)
            if not m:
                raise BundleError(f"lock file: cannot parse the line {line!r}")
            flush()
            head, hashes, via = m, [], []
        elif head is None:
            continue
        elif line.startswith("--hash="):
            hashes.append(line.removeprefix("--hash=").rstrip(" \\"))
        elif line.startswith("# via"):
            # "# via astropy" on one line, or "# via" followed by "#   astropy" lines
            rest = line.removeprefix("# via").strip()
            if rest:
                via.append(rest)
        elif line.startswith("#"):
            via.append(line.lstrip("#").strip())
    flush()
    return pins


def marker_environment(python_version: str, architecture: str) -> dict[str, str]:
    """PEP 508 marker values of the Lambda runtime for ``python_version`` on ``architecture``."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    # The runtime carries the newest patch release; for the running minor version use its
    # real patch level, otherwise X.Y.0 (the lock only splits on minor versions, bar rarities).
    full = platform.python_version() if python_version == running else f"{python_version}.0"
    return {"python_version": python_version, "python_full_version": full,
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "os_name": "posix", "platform_system": "Linux",
            "platform_machine": ARCHITECTURES[architecture], "implementation_version": full,
            "platform_release": "", "platform_version": ""}


def bundle_pins(pins: Sequence[Pin], *, python_version: str, architecture: str,
                include_boto3: bool = True) -> list[Pin]:
    """The lock entries the bundle needs: the runtime roots and everything only they pull in.

    A package is in when one of the packages it is "via" is in (the lock's own dependency
    graph), and its marker holds on the target runtime.
    """
    env = marker_environment(python_version, architecture)
    usable = [p for p in pins if p.marker is None or Marker(p.marker).evaluate(env)]
    by_name = {p.name: p for p in usable}
    wanted = set(RUNTIME_ROOTS) | (set(SDK_ROOTS) if include_boto3 else set())
    missing = sorted(wanted - set(by_name))
    if missing:
        raise BundleError(f"the lock file has no pin for {', '.join(missing)} on Python "
                          f"{python_version}")
    closure = set(wanted)
    changed = True
    while changed:
        changed = False
        for p in usable:
            parents = {canonicalize_name(v.split(" ")[0]) for v in p.via}
            if p.name not in closure and parents & closure:
                closure.add(p.name)
                changed = True
    return sorted((by_name[n] for n in closure), key=lambda p: p.name)


def platform_tags(architecture: str, glibc: tuple[int, int] = RUNTIME_GLIBC) -> list[str]:
    """Every manylinux platform tag the runtime accepts, newest first."""
    arch = ARCHITECTURES[architecture]
    tags = [f"manylinux_{glibc[0]}_{minor}_{arch}"
            for minor in range(glibc[1], OLDEST_GLIBC_MINOR - 1, -1)]
    return [*tags, f"manylinux2014_{arch}"]  # pip adds manylinux2010/1 for x86_64 itself


# -- pip -----------------------------------------------------------------------------------

def _pip_args(python_version: str, architecture: str, wheelhouse: Path | None) -> list[str]:
    args = ["--implementation", "cp", "--python-version", python_version,
            "--only-binary=:all:", "--no-deps", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off"]
    for tag in platform_tags(architecture):
        args += ["--platform", tag]
    if wheelhouse is not None:
        args += ["--no-index", "--find-links", str(wheelhouse)]
    return args


def _run_pip(args: list[str], requirements: Sequence[Pin], *, require_hashes: bool,
             work: Path, what: str) -> None:
    req = work / "requirements.txt"
    req.write_text("".join(p.requirement_line(with_hashes=require_hashes) + "\n"
                           for p in requirements), encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", *args, "-r", str(req)]
    if require_hashes:
        cmd.append("--require-hashes")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise BundleError(f"pip could not {what} (exit {proc.returncode}):\n{tail}")


def install_wheels(requirements: Sequence[Pin], target: Path, *, python_version: str,
                   architecture: str, wheelhouse: Path | None = None,
                   require_hashes: bool = True) -> None:
    """Put the pinned wheels for the runtime (not for this machine) into ``target``.

    pip downloads them (choosing by the runtime's tags, checking the lock's hashes) and each
    is unpacked as an installer lays it out. Not ``pip install --target``: before pip 23.3
    its resolver checked each wheel's Requires-Python against the interpreter running pip,
    not ``--python-version`` (pypa/pip#12216), so the pip 23.2 of a stock Python 3.11 venv
    refused numpy for 3.12; ``pip download`` has honoured ``--python-version`` far longer.
    """
    with tempfile.TemporaryDirectory(prefix="mastmirror-wheels-") as tmp:
        for wheel in download_wheels(requirements, Path(tmp), python_version=python_version,
                                     architecture=architecture, wheelhouse=wheelhouse,
                                     require_hashes=require_hashes):
            unpack_wheel(wheel, target)


def download_wheels(requirements: Sequence[Pin], dest: Path, *, python_version: str,
                    architecture: str, wheelhouse: Path | None = None,
                    require_hashes: bool = True) -> list[Path]:
    """``pip download`` the pinned wheels into ``dest`` (from ``wheelhouse`` alone, if given);
    the wheels in ``dest`` afterwards."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mastmirror-pip-") as work:
        _run_pip(["download", "--dest", str(dest),
                  *_pip_args(python_version, architecture, wheelhouse)],
                 requirements, require_hashes=require_hashes, work=Path(work),
                 what=f"get the wheels for Python {python_version} on {architecture}")
    return sorted(dest.glob("*.whl"))


def unpack_wheel(wheel: Path, target: Path) -> None:
    """Install one wheel into ``target`` as ``pip install --target`` would lay it out: its
    files at the root, with ``<name>.data/purelib`` and ``platlib`` merged in. The rest of
    ``.data`` (scripts, headers, data files) belongs outside site-packages, which a bundle
    does not have, and is left out; so is bytecode, which nothing here compiles."""
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if name.startswith("/") or "\\" in name or ".." in parts:
                raise BundleError(f"{wheel.name} holds a path outside the bundle: {name!r}")
            if info.is_dir():
                continue
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            dest = target.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)


# -- the tree ------------------------------------------------------------------------------

def _dropped(rel: tuple[str, ...]) -> bool:
    """True for a path (relative to the bundle root) that the function never needs."""
    name = rel[-1]
    if rel[0] == "bin":  # console scripts pointing at an interpreter that is not there
        return True
    if "__pycache__" in rel or Path(name).suffix in _DROP_SUFFIXES or name == "conftest.py":
        return True
    if rel[0].endswith(".dist-info") and len(rel) == 2 and name in _DROP_DIST_INFO:
        return True
    if any(rel[: len(d)] == d for d in _DROP_DIRS):
        return True
    if "tests" in rel[:-1]:
        # astropy/__init__.py imports astropy.tests.runner, so that package's own modules
        # stay; its test suite (astropy/tests/tests) and figures go like every other.
        return not (rel[:2] == ("astropy", "tests") and len(rel) == 3)
    return False


def strip_tree(root: Path) -> tuple[int, int]:
    """Delete what no invocation needs; returns (files, bytes) removed."""
    files = size = 0
    for path in sorted(root.rglob("*"), reverse=True):  # children before their folders
        rel = path.relative_to(root).parts
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
            continue
        if _dropped(rel):
            files += 1
            size += path.lstat().st_size
            path.unlink()
    return files, size


def mastmirror_version() -> str:
    """The version recorded in the bundle's ``mastmirror`` metadata."""
    try:
        return importlib.metadata.version("mastmirror")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def add_function_code(root: Path, package_dir: Path, version: str) -> list[str]:
    """Copy the ``lambda_sep`` package and a minimal dist-info.

    The dist-info lets ``importlib.metadata.version("mastmirror")`` answer inside Lambda, so
    catalogs record the real version rather than ``0+unknown``.
    """
    copied = []
    dest_pkg = root / package_dir.name
    for src in sorted(package_dir.rglob("*")):
        rel = src.relative_to(package_dir)
        if src.is_dir() or "__pycache__" in rel.parts or src.suffix in (".pyc", ".pyo"):
            continue
        out = dest_pkg / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
        copied.append(str(Path(package_dir.name) / rel))
    if not (dest_pkg / "handler.py").is_file():
        raise BundleError(f"{package_dir}/handler.py is missing: the Lambda entry point "
                          "lambda_sep.handler.handler would not import")
    info = root / f"mastmirror-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: mastmirror\nVersion: {version}\n"
        "Summary: mastmirror's SEP extraction function (Lambda bundle)\n", encoding="utf-8")
    return copied


def write_zip(root: Path, dest: Path, *, compresslevel: int = 6) -> tuple[int, int, int]:
    """Zip ``root`` deterministically; returns (zipped bytes, unzipped bytes, files).

    Entries are sorted, carry one fixed timestamp, mode 0644 (Lambda needs files readable
    by its sandbox user) and no directory entries, so equal trees give equal bytes.
    """
    files = sorted((p for p in root.rglob("*") if p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())
    unzipped = 0
    tmp = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED,
                         compresslevel=compresslevel) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=ZIP_EPOCH)
            info.create_system = 3  # unix, so the mode below is honoured when extracted
            info.external_attr = (0o100644 << 16)
            info.compress_type = zipfile.ZIP_DEFLATED
            data = path.read_bytes()
            unzipped += len(data)
            zf.writestr(info, data, compresslevel=compresslevel)
    os.replace(tmp, dest)
    return dest.stat().st_size, unzipped, len(files)


def _largest(root: Path, top: int = 8) -> list[tuple[str, int]]:
    sizes: dict[str, int] = {}
    for p in root.rglob("*"):
        if p.is_file():
            head = p.relative_to(root).parts[0]
            sizes[head] = sizes.get(head, 0) + p.stat().st_size
    return sorted(sizes.items(), key=lambda kv: -kv[1])[:top]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runtime_python_version(runtime: str) -> str:
    """``python3.12`` -> ``3.12``."""
    m = re.fullmatch(r"python(3\.\d+)", runtime)
    if not m:
        raise BundleError(f"not a Lambda Python runtime: {runtime!r}")
    return m.group(1)


def find_lock() -> Path:
    """The repository's ``requirements.lock``: next to pyproject.toml above this package (a
    checkout or an editable install), else in the current directory (a package installed
    from a checkout, as the README's service recipe does, run from that checkout)."""
    for folder in [*Path(__file__).resolve().parents, Path.cwd()]:
        candidate = folder / "requirements.lock"
        if candidate.is_file():
            return candidate
    raise BundleError("requirements.lock is neither above the installed daemon package nor "
                      "in the current directory: run from the mastmirror checkout, or pass "
                      "--lock PATH")


def build_bundle(output: Path, *, python_version: str, architecture: str,
                 lock: Path | None = None, wheelhouse: Path | None = None,
                 require_hashes: bool = True, include_boto3: bool = True,
                 package_dir: Path | None = None, compresslevel: int = 6,
                 progress: Callable[[str], None] | None = None) -> BundleReport:
    """Build the deployment zip at ``output``; raise BundleError past Lambda's size limit.

    ``wheelhouse`` makes the build offline (pip ``--no-index --find-links``);
    ``require_hashes=False`` accepts wheels that are not byte-identical to the lock's (for
    example ones built locally), which a wheelhouse of downloaded wheels does not need.
    ``compresslevel`` is zlib's (6, its default, is within 1% of 9's size at half the time).
    """
    say = progress or (lambda _msg: None)
    if architecture not in ARCHITECTURES:
        raise BundleError(f"architecture must be one of {', '.join(ARCHITECTURES)}, "
                          f"not {architecture!r}")
    if not re.fullmatch(r"3\.\d+", python_version):
        raise BundleError(f"--python-version must look like 3.12, not {python_version!r}")
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise BundleError(f"wheelhouse {wheelhouse} is not a directory")
    lock = lock or find_lock()
    pins = bundle_pins(parse_lock(lock.read_text(encoding="utf-8")),
                       python_version=python_version, architecture=architecture,
                       include_boto3=include_boto3)
    package_dir = package_dir or Path(lambda_sep.__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="mastmirror-bundle-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        say(f"installing {len(pins)} pinned wheels for Python {python_version} on "
            f"{architecture}" + (f" from {wheelhouse}" if wheelhouse else ""))
        install_wheels(pins, root, python_version=python_version, architecture=architecture,
                       wheelhouse=wheelhouse, require_hashes=require_hashes)
        stripped_files, stripped_bytes = strip_tree(root)
        add_function_code(root, package_dir, mastmirror_version())
        largest = _largest(root)
        # Fail before writing anything: the unzipped size is the tree's.
        check_limits(0, sum(p.stat().st_size for p in root.rglob("*") if p.is_file()), largest)
        say(f"zipping to {output}")
        zipped, unzipped, files = write_zip(root, output, compresslevel=compresslevel)
    report = BundleReport(path=output, zipped_bytes=zipped, unzipped_bytes=unzipped,
                          files=files, python_version=python_version, architecture=architecture,
                          pins=[f"{p.name}=={p.version}" for p in pins], sha256=_sha256(output),
                          stripped_files=stripped_files, stripped_bytes=stripped_bytes,
                          largest=largest)
    report.warnings = check_limits(zipped, unzipped, largest)
    return report


def check_limits(zipped: int, unzipped: int,
                 largest: Sequence[tuple[str, int]] = ()) -> list[str]:
    """Raise BundleError past Lambda's unzipped limit; return warnings (the 50 MB upload)."""
    if unzipped > UNZIPPED_LIMIT:
        parts = ", ".join(f"{n} {s / 1e6:.1f} MB" for n, s in largest[:4])
        raise BundleError(f"the bundle unzips to {unzipped:,} bytes ({unzipped / 1e6:.1f} MB), "
                          f"over Lambda's limit of {UNZIPPED_LIMIT:,} bytes for code and layers"
                          + (f"; largest parts: {parts}" if parts else ""))
    if zipped > DIRECT_UPLOAD_LIMIT:
        return [f"the zip is {zipped / 1e6:.1f} MB, over the 50 MB a direct upload allows: "
                "`lambda deploy` must stage it in S3 (set [lambda] code_s3)"]
    return []


def format_size(n: int) -> str:
    """Bytes as MB with one decimal (decimal megabytes, as AWS quotes its limits)."""
    return f"{n / 1e6:.1f} MB"


def describe(report: BundleReport) -> Iterable[str]:
    """Human-readable lines about a built bundle."""
    yield (f"{report.path}: {format_size(report.zipped_bytes)} zipped, "
           f"{format_size(report.unzipped_bytes)} unzipped ({report.files} files) for "
           f"python{report.python_version} on {report.architecture}")
    yield (f"limits: {100 * report.unzipped_bytes / UNZIPPED_LIMIT:.0f}% of 250 MB unzipped, "
           f"{100 * report.zipped_bytes / DIRECT_UPLOAD_LIMIT:.0f}% of 50 MB direct upload")
    yield (f"stripped {report.stripped_files} files ({format_size(report.stripped_bytes)}): "
           "tests, caches, headers, stubs, scripts, install records")
    yield "largest: " + ", ".join(f"{n} {format_size(s)}" for n, s in report.largest)
    yield "pins: " + " ".join(report.pins)
    yield f"sha256: {report.sha256}"
    for w in report.warnings:
        yield f"warning: {w}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m daemon.lambda_bundle download DIR``: fill ``DIR/py<X.Y>-<arch>`` with the
    bundle's pinned wheels (set-up, needs no config)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m daemon.lambda_bundle",
                                     description="Download the Lambda bundle's pinned wheels "
                                     "into a wheelhouse for offline `mastmirror lambda build`.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    dl = sub.add_parser("download", help="pip download the bundle's wheels into "
                        "DEST/py<X.Y>-<arch>")
    dl.add_argument("dest", type=Path)
    dl.add_argument("--python-version", default="3.12")
    dl.add_argument("--arch", choices=sorted(ARCHITECTURES), default=_machine_arch())
    dl.add_argument("--no-boto3", action="store_true")
    args = parser.parse_args(argv)
    try:
        pins = bundle_pins(parse_lock(find_lock().read_text(encoding="utf-8")),
                           python_version=args.python_version, architecture=args.arch,
                           include_boto3=not args.no_boto3)
        dest = args.dest / f"py{args.python_version}-{args.arch}"
        wheels = download_wheels(pins, dest, python_version=args.python_version,
                                 architecture=args.arch)
    except BundleError as exc:
        print(f"daemon.lambda_bundle: error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(wheels)} wheels in {dest}")
    return 0


def _machine_arch() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
