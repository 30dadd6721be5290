"""What every benchmark shares: repetitions run alternately, figures as median and range, backends, memory.

A benchmark measures the App and its baseline in the same run, in turns
(A, B, A, B, ...), so a noisy neighbour on the shared machine slows both alike;
docs/benchmarks.md explains how to read the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import make_url, text

from app.store.engine import make_engine

BACKENDS = ("sqlite", "postgres")
POSTGRES_URL_VARIABLES = ("STACKSONA_BENCH_POSTGRES_URL", "STACKSONA_TEST_POSTGRES_URL")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def add_common_arguments(parser: argparse.ArgumentParser, *, repetitions: int = 3) -> None:
    parser.add_argument(
        "--backend", choices=(*BACKENDS, "both"), default="both", help="database backend(s) to measure (default: both)"
    )
    parser.add_argument("--repetitions", type=int, default=repetitions, help="turns of each contender (at least 1)")


def backends(choice: str) -> tuple[str, ...]:
    return BACKENDS if choice == "both" else (choice,)


def alternate(contenders: Mapping[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Each contender measured `repetitions` times, in turns, so drift in the machine hits all of them alike."""
    figures: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repetitions):
        for name, measure in contenders.items():
            figures[name].append(measure())
    return figures


def spread(values: Sequence[float], unit: str = "", digits: int = 1) -> str:
    """`median (min-max)` of one figure over the repetitions."""
    if not values:
        return "n/a"
    fmt = f"{{:.{digits}f}}"
    median, low, high = (fmt.format(v) for v in (statistics.median(values), min(values), max(values)))
    suffix = f" {unit}" if unit else ""
    return f"{median}{suffix} ({low}-{high})" if len(values) > 1 else f"{median}{suffix}"


def ratio(values: Sequence[float], baseline: Sequence[float]) -> str:
    """The median against the baseline's median, as `0.82x`."""
    if not values or not baseline or statistics.median(baseline) == 0:
        return "n/a"
    return f"{statistics.median(values) / statistics.median(baseline):.2f}x"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, one line per row (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def postgres_url() -> str:
    for variable in POSTGRES_URL_VARIABLES:
        if url := os.environ.get(variable):
            return url
    return DEFAULT_POSTGRES_URL


@contextmanager
def database_url(backend: str, tmp: Path) -> Iterator[str]:
    """A fresh, empty database for one measurement: a SQLite file in `tmp`, or a throwaway PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        # The schema travels in the URL so that processes the benchmark starts use it too.
        url = make_url(postgres_url()).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def rss_mb(pid: int) -> float:
    """Resident memory of one process now, in MiB (Linux /proc); 0 once the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Samples the resident memory of processes every `interval` seconds and keeps each one's peak."""

    def __init__(self, pids: Callable[[], Mapping[str, int]], interval: float = 0.2) -> None:
        self._pids, self._interval = pids, interval
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            for name, pid in self._pids().items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), rss_mb(pid))
