"""B4, the scale of waiting: `python -m bench.scale --gates 100000 --backend both --repetitions 3`.

Fills a fresh database with `--gates` pending gates (bench/scale_fill.py: most await a
reviewer, a share is due now), then prints, per backend:

* the latency of `GateQueue.claim_due` (one gate, then released, so the table stays the
  same), in turns with the same claim on a database of 100 gates filled alike: their ratio
  shows what the waiting gates cost each claim;
* the bytes each pending gate takes on disk (its row, its history and deliveries, every
  index, and its share of the few stored policies), against the raw size of the data in its columns;
* the peak resident memory of this process (it runs the store like a worker does).

docs/benchmarks.md (B4) records the figures and where each limit comes from.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Select, select, text

from app.core.gate import OPEN_STATES, Gate
from app.store.engine import make_engine, migrate
from app.store.queue import GateQueue
from app.store.records import reading
from app.store.schema import deliveries, gate_history, gates, policies
from bench.common import PeakMemory, add_common_arguments, alternate, backends, database_url, ratio, spread, table
from bench.scale_fill import OWNER, Clock, Shape, fill
from bench.scale_sizes import SizeReport, measure_sizes

BASELINE_GATES = 100
LARGEST_COLUMNS = 6
# `policies` holds one row per distinct policy (a handful), not one per gate; counted all the same.
PER_GATE_TABLES = (gates, gate_history, deliveries, policies)


class Latency:
    """`count` runs of `timed` (each followed by `undo`, untimed); returns their median in ms, keeps their p99."""

    def __init__(self, timed: Callable[[], Any], undo: Callable[[Any], None], count: int) -> None:
        self._timed, self._undo, self._count = timed, undo, count
        self.p99: list[float] = []

    def __call__(self) -> float:
        latencies = []
        for _ in range(self._count):
            started = time.perf_counter()
            result = self._timed()
            latencies.append((time.perf_counter() - started) * 1000)
            self._undo(result)
        self.p99.append(statistics.quantiles(latencies, n=100)[98])
        return statistics.median(latencies)


def claim_latency(queue: GateQueue, count: int) -> Latency:
    """One due gate claimed, then released at once, so the table stays the same."""

    def claim() -> list[Gate]:
        return queue.claim_due(OWNER, limit=1, lease_seconds=60)

    def release(claimed: list[Gate]) -> None:
        if not claimed:
            raise RuntimeError("nothing due: the benchmark's database lost its due gates")
        queue.release(claimed)

    return Latency(claim, release, count)


def select_latency(engine: Engine, now: float, count: int) -> Latency:
    """The claim's SELECT alone, in its own read-only transaction: what finding a due gate costs."""
    due = _due_query(now)

    def find() -> Any:
        with reading(engine) as conn:
            return conn.execute(due).scalar()

    return Latency(find, lambda _: None, count)


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description="B4: the scale of waiting.")
    parser.add_argument("--gates", type=int, default=100_000, help="pending gates in the measured database")
    parser.add_argument("--claims", type=int, default=300, help="claims timed per repetition")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.gates < BASELINE_GATES or args.repetitions < 1 or args.claims < 2:
        parser.error(f"--gates must be at least {BASELINE_GATES}, --repetitions at least 1, --claims at least 2")
    shape = Shape(args.gates)
    _say(
        f"B4 scale of waiting: {args.gates} pending gates ({shape.new} new, {shape.due} awaiting review and due now, "
        f"the rest waiting for a reviewer); {args.repetitions} repetitions of {args.claims} claims"
    )
    with tempfile.TemporaryDirectory(prefix="stacksona-scale-") as tmp:
        for backend in backends(args.backend):
            _run(backend, Path(tmp), args)
    return 0


def _run(backend: str, tmp: Path, args: argparse.Namespace) -> None:
    _say()
    _say(f"== {backend} ==")
    now = time.time()
    with PeakMemory(lambda: {"bench": os.getpid()}) as filling, ExitStack() as databases:
        started = time.monotonic()
        big = databases.enter_context(_filled(backend, tmp, args.gates, now))
        small = databases.enter_context(_filled(backend, tmp, BASELINE_GATES, now))
        filled = time.monotonic() - started
        _say(f"filled in {filled:.1f} s (peak RSS while filling {filling.peaks.get('bench', 0):.0f} MB)")
        _say(f"claim plan: {_claim_plan(big, now)}")
        _print_sizes(measure_sizes(big, PER_GATE_TABLES), args.gates)
        with PeakMemory(lambda: {"bench": os.getpid()}) as claiming:
            _print_claims(big, small, now, args)
        _say(f"peak RSS of this process while claiming: {claiming.peaks.get('bench', 0):.0f} MB (target 100 MB)")


@contextmanager
def _filled(backend: str, tmp: Path, count: int, now: float) -> Iterator[Engine]:
    with database_url(backend, tmp) as url:
        engine = make_engine(url)
        try:
            migrate(engine)
            fill(engine, count, now)
            yield engine
        finally:
            engine.dispose()


def _print_claims(big: Engine, small: Engine, now: float, args: argparse.Namespace) -> None:
    # The clock stands still: gates waiting for a reviewer never fall due while they are measured.
    app, baseline = f"claim_due, {args.gates} gates", f"claim_due, {BASELINE_GATES} gates (baseline)"
    timers = {
        app: claim_latency(GateQueue(big, Clock(now)), args.claims),
        baseline: claim_latency(GateQueue(small, Clock(now)), args.claims),
        f"its SELECT alone, {args.gates} gates": select_latency(big, now, args.claims),
    }
    medians = alternate(timers, args.repetitions)
    rows = [["one due gate", "median ms", "p99 ms"]]
    rows += [[name, spread(medians[name], digits=3), spread(timer.p99, digits=3)] for name, timer in timers.items()]
    _say(table(rows))
    _say(f"claim_due ratio to the baseline (median): {ratio(medians[app], medians[baseline])}; target: under 1 ms")


def _due_query(now: float) -> Select[tuple[int]]:
    """The claim's SELECT (app/store/queue.py), without its row locks."""
    return (
        select(gates.c.id)
        .where(gates.c.state.in_(OPEN_STATES), gates.c.next_attempt_at <= now)
        .where((gates.c.lease_expires_at.is_(None)) | (gates.c.lease_expires_at < now))
        .order_by(gates.c.next_attempt_at)
        .limit(1)
    )


def _claim_plan(engine: Engine, now: float) -> str:
    """How the database finds due gates."""
    compiled = _due_query(now).compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            lines = conn.execute(text(f"EXPLAIN {compiled}")).scalars()
            return " | ".join(line.strip() for line in lines)
        return " | ".join(str(row[-1]) for row in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))


def _print_sizes(report: SizeReport, count: int) -> None:
    rows = [["relation", "bytes per pending gate"]]
    rows += [[name, f"{size / count:.0f}"] for name, size in report.relations]
    _say(table(rows))
    per_gate, raw = report.total / count, report.raw / count
    _say(f"on disk: {per_gate:.0f} B per pending gate (target 1024); raw column data: {raw:.0f} B")
    _say(f"on disk / raw: {per_gate / raw:.2f}x")
    largest = ", ".join(f"{name} {size / count:.0f}" for name, size in report.columns[:LARGEST_COLUMNS])
    _say(f"largest raw columns, B per pending gate: {largest}")


if __name__ == "__main__":
    raise SystemExit(main())
