"""The code-quality bar is part of the suite: ruff everywhere, mypy --strict on app/ and bench/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs a test dependency with this interpreter, so a venv that is not on PATH still counts."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed; it is a test dependency: pip install -e '.[test]'")
    command = (sys.executable, "-m", module, *args)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_is_clean() -> None:
    result = run_module("ruff", "check", "app", "tests", "bench", "tools")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run_module("mypy", "app", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_print_in_product_code() -> None:
    allowed = {"cli.py", "demo.py", "__main__.py"}
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "app").rglob("*.py")
        if path.name not in allowed
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip().startswith("print(")
    ]
    assert offenders == []
