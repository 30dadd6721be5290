"""The benchmarks' fast mode: each bench command still runs and checks its own outcome (figures are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import POSTGRES_URL_VARIABLE

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["sqlite", "postgres"]


def run_bench(module: str, *args: str, timeout: float) -> str:
    """`python -m bench.<module> …` from the repository root; its output, once it exited 0."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def backend_or_skip(backend: str) -> str:
    """PostgreSQL runs need its URL: skipped with the reason locally, a failure in CI."""
    if backend == "postgres" and not os.environ.get(POSTGRES_URL_VARIABLE):
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_URL_VARIABLE} must be set in CI")
        pytest.skip(
            f"PostgreSQL benchmarks need {POSTGRES_URL_VARIABLE} (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    return backend


@pytest.mark.parametrize("topology", ["serve", "split"])
def test_the_burst_benchmark_runs_a_small_burst_to_the_end(topology: str) -> None:
    args = ["--gates", "20", "--timeout", "60", "--repetitions", "1", "--backend", "sqlite", "--topology", topology]
    out = run_bench("burst", *args, timeout=180)
    assert f"B3 burst on sqlite ({topology})" in out
    assert "burst: exactly one final review per gate" in out
    assert "connections to GitHub:" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_scale_benchmark_prints_its_figures_for_a_small_table(backend: str) -> None:
    args = ["--gates", "2000", "--repetitions", "1", "--claims", "50", "--backend", backend_or_skip(backend)]
    out = run_bench("scale", *args, timeout=300)
    for figure in ("claim plan:", "claim_due, 2000 gates", "B per pending gate", "peak RSS of this process"):
        assert figure in out, out
    assert "while claiming: 0 MB" not in out, out  # a phase shorter than the sampling interval is measured too


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_acks_benchmark_runs_briefly_and_finds_every_2xx_stored(backend: str) -> None:
    args = ["--backend", backend_or_skip(backend), "--repetitions", "1", "--seconds", "1", "--rate-seconds", "1"]
    out = run_bench("acks", *args, "--contenders", "echo,web,serve,split", timeout=600)
    assert "acks: every 2xx stored with a gate of its own" in out
    assert f"== B1 acks, {backend}" in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_latency_benchmark_runs_briefly_and_every_review_arrives(backend: str) -> None:
    args = ["--backend", backend_or_skip(backend), "--repetitions", "1", "--samples", "2", "--rate", "20"]
    args += ["--lead-seconds", "1"]
    out = run_bench("latency", *args, timeout=600)
    assert "latency: every review arrived" in out
    assert f"== B2 decision latency, {backend}" in out
