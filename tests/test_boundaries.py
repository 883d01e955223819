"""The packages' boundaries, read from their import statements (the AST, wherever in a
module they stand): what state/ may know, and which modules talk to which external system."""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "lambda_sep", "state", "standin")

# Each external system's client library, and the only modules that may import it.
OWNERS = {
    "astroquery": {"daemon/mast.py"},
    # astroquery's HTTP session: daemon.mast gives it timeouts and retries.
    "requests": {"daemon/mast.py"},
    "urllib3": {"daemon/mast.py"},
    # S3 in storage, Lambda in lambda_invoke/lambda_deploy, SQS (the archive's notifications)
    # in notifications.
    "boto3": {"lambda_sep/storage.py", "daemon/lambda_invoke.py", "daemon/lambda_deploy.py",
              "daemon/notifications.py"},
    "botocore": {"lambda_sep/storage.py", "daemon/lambda_invoke.py", "daemon/lambda_deploy.py",
                 "daemon/notifications.py"},
    "moto": {"standin/demo.py"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of the packages ``path`` imports (absolute imports; ours are all)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@cache
def modules() -> dict[str, set[str]]:
    """``{"daemon/mast.py": {"astroquery", ...}}`` for every module of the packages."""
    return {p.relative_to(REPO).as_posix(): imported_roots(p)
            for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def test_imports_are_found_wherever_they_stand(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os.path\nfrom . import sibling\n"
                     "def f():\n    from boto3.session import Session\n"
                     "    class C:\n        import astroquery.mast as m\n")
    assert imported_roots(probe) == {"os", "boto3", "astroquery"}


def test_state_knows_nothing_of_mast_aws_or_the_cli() -> None:
    forbidden = {"astroquery", "boto3", "botocore", "requests", "urllib3", "moto", "click",
                 "daemon", "lambda_sep", "standin"}
    found = {m: sorted(roots & forbidden) for m, roots in modules().items()
             if m.startswith("state/") and roots & forbidden}
    assert found == {}


@pytest.mark.parametrize("library", sorted(OWNERS))
def test_each_client_library_is_imported_in_its_own_modules_only(library: str) -> None:
    importers = {m for m, roots in modules().items() if library in roots}
    assert importers == OWNERS[library]


def test_the_contract_is_standard_library_only() -> None:
    # Both sides import it: the daemon must not pay for numpy or boto3 to read a key rule.
    assert modules()["lambda_sep/contract.py"] - {"__future__"} <= sys.stdlib_module_names
