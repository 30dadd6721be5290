"""The code-quality bar is part of the suite: ruff everywhere, mypy --strict on app/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install -e '.[test]')")
def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "app", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    result = run(sys.executable, "-m", "mypy", "app")
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
