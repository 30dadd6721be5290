"""What every benchmark shares: repetitions run alternately, figures as median and range, backends, memory.

A benchmark measures the App and its baseline in the same run, in turns
(A, B, A, B, ...), so a noisy neighbour on the shared machine slows both alike;
docs/benchmarks.md explains how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import make_url, text

from app.simulators.app_environment import app_environment as deployed_environment
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
        self._take_sample()  # a phase shorter than `interval` is measured too

    def _sample(self) -> None:
        self._take_sample()
        while not self._stop.wait(self._interval):
            self._take_sample()

    def _take_sample(self) -> None:
        for name, pid in self._pids().items():
            self.peaks[name] = max(self.peaks.get(name, 0.0), rss_mb(pid))


# --- Real App processes against the simulators (bench.acks, bench.latency) ---

CAPTURED_DELIVERY = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "deployment_protection_rule.captured.json"
)
# The captured delivery's repository, installation and run, as GitHub sent them.
CAPTURED_OWNER, CAPTURED_REPO, CAPTURED_REPOSITORY_ID = "Codertocat", "Hello-World", 186853002
CAPTURED_INSTALLATION, CAPTURED_RUN, CAPTURED_DEPLOYMENT = 2311213, "9876543210", "145988746"
CAPTURED_CALLBACK = "https://api.github.com/repos/Codertocat/Hello-World/actions/runs/9876543210/"


def free_port() -> int:
    """An ephemeral port the OS just handed out (the App's PORT setting cannot be 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def app_environment(
    *, private_pem: str, secret: str, api_key: str, app_id: int, github_url: str, stacksona_url: str, database: str
) -> dict[str, str]:
    """The environment of an App process (and of the baselines), nothing of the benchmark's own but PATH."""
    deployed = deployed_environment(
        private_pem=private_pem,
        app_id=app_id,
        webhook_secret=secret,
        api_key=api_key,
        github_url=github_url,
        stacksona_url=stacksona_url,
        database_url=database,
    )
    return deployed | {
        # bench.baseline_app runs from a scratch directory too (the App reads a .env in its working directory).
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "GITHUB_REDELIVERY_INTERVAL": "off",
        "HOST": "127.0.0.1",
        "WORKER_HEALTH_PORT": str(free_port()),
    }


class Served:
    """A server process (`python -m …`) on its own port, its output in a log file; stopped with SIGTERM."""

    def __init__(self, module_args: Sequence[str], env: Mapping[str, str], log: Path, *, cwd: Path) -> None:
        self.port = free_port()
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own modules
                [sys.executable, "-m", *module_args],
                env={**env, "PORT": str(self.port)},
                cwd=cwd,
                stdout=out,
                stderr=out,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_until_healthy(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log.name}: exited with {self.process.returncode}:\n{self._tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.log.name}: not healthy after {timeout:.0f}s:\n{self._tail()}")

    def wait_for_line(self, text: str, timeout: float = 300.0) -> None:
        """Until the server's log holds `text` (e.g. its start-up checks are over and no longer take CPU)."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log.name}: exited with {self.process.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.log.name}: no {text!r} after {timeout:.0f}s:\n{self._tail()}")
            time.sleep(0.1)

    def _tail(self, lines: int = 30) -> str:
        """The log's last lines: it lives in the benchmark's temporary directory, gone once the command ends."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def processes(self) -> dict[str, int]:
        """The server's process and its children (gunicorn's workers), by a readable name."""
        found = {"master": self.process.pid}
        for n, child in enumerate(children(self.process.pid)):
            found[f"process{n + 1}"] = child
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def children(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return sorted(found)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU these processes have used so far (Linux /proc); a process already gone counts 0."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def postgres_server_pids() -> list[int]:
    """This machine's PostgreSQL server processes (every backend, the WAL writer...), by their name."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if stat.read_text().strip() == "postgres":
                found.append(int(stat.parent.name))
    return found


def peak_line(peaks: Mapping[str, float]) -> str:
    """Peak RSS per process, e.g. `master 60, process1 92 MiB`."""
    return ", ".join(f"{name} {mb:.0f}" for name, mb in sorted(peaks.items())) + " MiB" if peaks else "n/a"


def percentile_ms(values: Sequence[float], fraction: float) -> float:
    """The `fraction` percentile of latencies given in seconds, in milliseconds."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000
