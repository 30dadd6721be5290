"""Load held: `python -m tools.soak --minutes 10 --rate 20 --backend sqlite|postgres`.

The App runs as real processes (SQLite: `serve`; PostgreSQL: `web` beside two `worker`
replicas) while GitHub delivers `--rate` webhooks a second, each a new job of one of six
environments (Stacksona allows, rejects, or a reviewer approves with a one-time token or
rejects), a few of them delivered again. Every few seconds the resident memory of every App
process is sampled. At the end every gate must be closed and decided exactly once
(`tools/invariants.py`), no delivery answered other than 2xx and no ERROR line logged; memory
is called flat when the mean of the last third of the samples is within 10% (or 5 MiB) of the
second third's, and the App called keeping up when the open gates, sampled while deliveries
flow, do not grow the same way (50 gates of slack). Exits 1 otherwise. docs/reliability.md
reports the figures.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from app.core.gate import FINAL_STATES, OPEN_STATES
from app.store import Store
from bench.common import rss_mb
from tools.app_processes import Deployed, Topology, deployed
from tools.invariants import ALL_GATES, Findings, check, gather
from tools.traffic import ENVIRONMENTS, JobSender, Reviewer, script_decisions

SETTINGS = {"WORKER_CONCURRENCY": "4", "STACKSONA_REQUIRE_APPROVAL_TOKEN": "true"}
SETTLE_TIMEOUT_SECONDS = 300.0
FLAT_RATIO, FLAT_MIB = 0.10, 5.0
# Open gates wobble with the reviewer's pace: a backlog counts as growing beyond this many more.
OPEN_GATES_SLACK = 50.0
DUPLICATE_EVERY = 25  # every 25th job is delivered twice: once more with its GUID, once with a new one


class MemorySamples:
    """RSS of every App process (by role name) every `interval` seconds, from a thread of its own."""

    def __init__(self, deployed_app: Deployed, interval: float) -> None:
        self._d, self._interval = deployed_app, interval
        self.series: dict[str, list[float]] = defaultdict(list)
        self.open_gates: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def __enter__(self) -> MemorySamples:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for name, pid in self._d.site.pids().items():
                self.series[name].append(rss_mb(pid))
            self.open_gates.append(sum(self._d.store.gates.count_by_state().get(s, 0) for s in OPEN_STATES))


def flat(samples: list[float], slack: float = FLAT_MIB) -> tuple[bool, float, float]:
    """(flat?, mean of the second third, mean of the last third): the last within 10% (or `slack`) of the second."""
    third = max(1, len(samples) // 3)
    middle, last = statistics.fmean(samples[third : 2 * third] or samples), statistics.fmean(samples[-third:])
    return last - middle <= max(slack, FLAT_RATIO * middle), middle, last


def deliver_steadily(sender: JobSender, rate: float, seconds: float, statuses: Counter[int]) -> int:
    """One new job every 1/rate s (sent from a pool, so a slow answer does not slow the pace)."""
    rng = random.Random(7)  # noqa: S311 - the mix of environments, not a secret
    started, sent = time.monotonic(), 0
    with ThreadPoolExecutor(8, thread_name_prefix="deliver") as pool:
        while (due := started + sent / rate) < started + seconds:
            time.sleep(max(0.0, due - time.monotonic()))
            pool.submit(_one_job, sender, 1000 + sent, ENVIRONMENTS[sent % len(ENVIRONMENTS)], sent, rng)
            sent += 1
    for record in sender.record.snapshot():
        statuses[record.status] += 1
    return sent


def _one_job(sender: JobSender, run_id: int, environment: str, n: int, rng: random.Random) -> None:
    payload = sender.open_job(run_id, environment)
    guid = sender.deliver(run_id, environment, payload)
    if n % DUPLICATE_EVERY == 0:
        sender.deliver(run_id, environment, payload, guid)
        sender.deliver(run_id, environment, payload)


def wait_closed(store: Store, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if all(g.state in FINAL_STATES for g in store.gates.list_gates(limit=ALL_GATES)):
            break
        time.sleep(1.0)
    return time.monotonic() - started


def report(memory: MemorySamples) -> bool:
    """One line per process; True when every one is flat."""
    all_flat = True
    for name, samples in sorted(memory.series.items()):
        is_flat, middle, last = flat(samples)
        all_flat &= is_flat
        say(
            f"  {name}: RSS start {samples[0]:.1f} MiB, peak {max(samples):.1f}, end {samples[-1]:.1f}; "
            f"mean second third {middle:.1f}, last third {last:.1f}: {'flat' if is_flat else 'GROWING'}"
        )
    return all_flat


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@dataclass
class Soaked:
    """What a soak leaves to judge: the delivery answers, the records' findings, memory, the App's errors."""

    jobs: int
    statuses: Counter[int]
    findings: Findings
    histories: list[str]
    memory: MemorySamples
    settled_seconds: float
    streaming_samples: int  # open-gate samples taken while deliveries flowed (the rest: the drain)
    errors: list[str]


def soak(args: argparse.Namespace, topology: Topology, workdir: Path) -> Soaked:
    statuses: Counter[int] = Counter()
    with deployed(args.backend, topology, workdir, SETTINGS) as d:
        script_decisions(d.stacksona)
        sender = JobSender(d.github, d.site.webhook_url)
        reviewer = Reviewer(d.stacksona, random.Random(3), delay=(0.2, 2.0))  # noqa: S311 - not a secret
        with reviewer, MemorySamples(d, args.sample_seconds) as memory:
            jobs = deliver_steadily(sender, args.rate, args.minutes * 60, statuses)
            streaming = len(memory.open_gates)
            settled = wait_closed(d.store, SETTLE_TIMEOUT_SECONDS)
        findings = check(gather(d.github, d.store, sender.record), d.stacksona)
        histories = findings.histories(d.store)[:50]
    errors = [line for line in d.site.logs().splitlines() if " ERROR " in line]
    return Soaked(jobs, statuses, findings, histories, memory, settled, streaming, errors)


def judge(run: Soaked) -> bool:
    """Prints the figures; True when the load was held."""
    counts = run.findings.counts
    say(
        f"jobs {run.jobs}, deliveries {sum(run.statuses.values())} (HTTP {dict(sorted(run.statuses.items()))}), "
        f"gates {counts['gates']} (approved {counts['gate_approved']}, rejected {counts['gate_rejected']}, "
        f"superseded {counts['gate_superseded']}); open gates sampled: max {max(run.memory.open_gates, default=0)}; "
        f"last gate closed {run.settled_seconds:.0f}s after the last delivery"
    )
    say(f"lost {counts['lost']}, decided twice {counts['decided_twice']}, ERROR log lines {len(run.errors)}")
    all_flat = report(run.memory)
    for line in [*run.findings.violations, *run.histories, *run.errors[:20]]:
        say(f"  {line}")
    during = [float(n) for n in run.memory.open_gates[: run.streaming_samples]] or [0.0]
    keeping_up, middle, last = flat(during, slack=OPEN_GATES_SLACK)
    pace = "kept up" if keeping_up else "FALLING BEHIND"
    say(f"open gates while delivering: mean second third {middle:.0f}, last third {last:.0f}: {pace}")
    refused = set(run.statuses) - {200, 202}
    return not (run.findings.violations or run.errors or refused) and all_flat and keeping_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="deliveries a second")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--topology", choices=("serve", "split"), help="default: serve on SQLite, split on PostgreSQL")
    parser.add_argument("--keep-logs", action="store_true", help="keep the App's logs when the soak holds")
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="interval of the RSS samples")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like an error, so the App's processes and the PostgreSQL schema are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    topology: Topology = args.topology or ("serve" if args.backend == "sqlite" else "split")
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    say(f"soak: backend {args.backend}, topology {topology}, {args.rate:g} deliveries/s for {args.minutes:g} min")
    held = judge(soak(args, topology, workdir))
    say(f"verdict: {'ok' if held else 'FAIL'}" + ("" if held and not args.keep_logs else f" (logs: {workdir})"))
    if held and not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
