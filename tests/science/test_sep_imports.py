"""The extraction function's import discipline: what goes into the Lambda bundle."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import lambda_sep

PACKAGE = Path(lambda_sep.__file__).resolve().parent
# Every module of the package goes into the bundle: all of them are function code.
FUNCTION_MODULES = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]))
ALLOWED = {"numpy", "astropy", "sep", "boto3", "botocore", "lambda_sep", "__future__"}


def test_the_modules_are_found() -> None:
    assert {"handler", "event", "contract", "storage"} <= set(FUNCTION_MODULES)


@pytest.mark.parametrize("name", ["__init__", *FUNCTION_MODULES])
def test_imports_are_allowed_and_module_level(name: str) -> None:
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    top_level = set(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {(node.module or "").split(".")[0]}
        else:
            continue
        bad = {r for r in roots if r not in ALLOWED and r not in sys.stdlib_module_names}
        assert not bad, f"{name}.py imports {bad}"
        # Module level, so a warm invocation pays nothing again.
        assert node in top_level, f"{name}.py imports {roots} inside a function"


def test_handler_import_pulls_no_daemon_or_state() -> None:
    code = ("import sys, lambda_sep.handler; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('daemon', 'state', 'standin')))")
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.strip() == "[]"
