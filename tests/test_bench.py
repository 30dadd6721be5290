"""The benchmarks' fast mode: each bench command still runs and checks its own outcome (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_burst_benchmark_runs_a_small_burst_to_the_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.burst", "--gates", "20", "--timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "burst: exactly one final review per gate" in done.stdout
    assert "connections to GitHub:" in done.stdout
