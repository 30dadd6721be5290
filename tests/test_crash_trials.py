"""The crash trials and the soak in their fast modes: real App processes, SIGKILLs, invariants checked.

The long modes (at least 50 trials per backend, a 10-minute soak) and their figures are in
docs/reliability.md; these runs only show the tools work end to end and still find nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import POSTGRES_URL_VARIABLE

# Real processes on a shared machine: a trial takes 20-45 s, a restart of the App several seconds.
pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"), pytest.mark.timeout(200)]
ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres" and not os.environ.get(POSTGRES_URL_VARIABLE):
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_URL_VARIABLE} must be set in CI")
        pytest.skip(f"PostgreSQL runs need {POSTGRES_URL_VARIABLE} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return str(request.param)


def test_two_crash_trials_find_no_violation(backend: str) -> None:
    done = run_tool("tools.crash_trials", "--trials", "2", "--backend", backend, "--runs", "4", "--kills", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gates lost 0, decided twice 0" in done.stdout
    assert done.stdout.count("\ntrial ") == 2


def test_a_short_soak_holds(backend: str) -> None:
    done = run_tool("tools.soak", "--minutes", "0.2", "--rate", "5", "--backend", backend, "--sample-seconds", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost 0, decided twice 0, ERROR log lines 0" in done.stdout
    assert "verdict: ok" in done.stdout
