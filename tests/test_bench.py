"""The benchmarks' fast mode: each bench command still runs and checks its own outcome (figures are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_burst_benchmark_runs_a_small_burst_to_the_end() -> None:
    command = ["--gates", "20", "--timeout", "60", "--repetitions", "1", "--backend", "sqlite"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.burst", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "burst: exactly one final review per gate" in done.stdout
    assert "connections to GitHub:" in done.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_scale_benchmark_prints_its_figures_for_a_small_table(backend: str) -> None:
    if backend == "postgres" and not os.environ.get("STACKSONA_TEST_POSTGRES_URL"):
        pytest.skip(
            "the PostgreSQL run needs STACKSONA_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    command = ["--gates", "2000", "--repetitions", "1", "--claims", "50", "--backend", backend]
    done = subprocess.run(
        [sys.executable, "-m", "bench.scale", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in ("claim plan:", "claim_due, 2000 gates", "B per pending gate", "peak RSS of this process"):
        assert figure in done.stdout, done.stdout


def _backend_or_skip(backend: str) -> str:
    if backend == "postgres" and not os.environ.get("STACKSONA_TEST_POSTGRES_URL"):
        pytest.skip("PostgreSQL benchmarks need STACKSONA_TEST_POSTGRES_URL")
    return backend


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_acks_benchmark_runs_briefly_and_finds_every_2xx_stored(backend: str) -> None:
    command = ["--backend", _backend_or_skip(backend), "--repetitions", "1", "--seconds", "1", "--rate-seconds", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.acks", *command, "--contenders", "echo,web,serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "acks: every 2xx stored with a gate of its own" in done.stdout
    assert f"== B1 acks, {backend}" in done.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_latency_benchmark_runs_briefly_and_every_review_arrives(backend: str) -> None:
    command = ["--backend", _backend_or_skip(backend), "--repetitions", "1", "--samples", "2", "--rate", "20"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.latency", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "latency: every review arrived" in done.stdout
    assert f"== B2 decision latency, {backend}" in done.stdout
