"""The package's shape, checked: lint rules, import contracts, types, sizes, no repeated code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qwdeploy"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_no_banned_import_or_lint_error():
    result = run("ruff", "check", "qwdeploy", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    result = run("ruff", "format", "--check", "qwdeploy", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_hold_one_way_flow_pure_core_and_no_cycles():
    result = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_error_in_the_package():
    result = run("mypy", "qwdeploy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_block_of_ten_lines_is_repeated_in_the_package():
    result = run("pylint", "--disable=all", "--enable=duplicate-code", "--min-similarity-lines=10", "qwdeploy")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= MAX_FUNCTION_LINES, f"{node.name} is too long"
