"""Crash trials: `python -m tools.crash_trials --trials 50 --backend sqlite|postgres [--topology …] [--seed S]`.

Each trial runs the App as real processes against the simulators (in this process), streams
deliveries (allow, reject, a reviewer who approves with a one-time token or rejects, duplicate
deliveries with the same and with new GUIDs, two jobs of one run in one environment, several
environments per run), holds a share of Stacksona creates, token validations and GitHub reviews
in flight, and SIGKILLs a random App process at a random moment (preferably while a call is held),
then restarts it. At the end every gate must close and the invariants of `tools/invariants.py`
must hold; every gate open at a kill must move on within 30 s of the kill (restart included).

Prints one line per trial and a summary; exits 1 on any violation, with the evidence and the
directory holding the App's logs. docs/reliability.md reports the figures.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from app.core.gate import FINAL_STATES
from app.store import Store
from tools.app_processes import AppSite, Topology, deployed
from tools.faults import RECOVERY_TARGET_SECONDS, Kill, Stalls, kill_and_restart
from tools.invariants import ALL_GATES, Findings, check, gather
from tools.traffic import JobKey, JobSender, Reviewer, script_decisions

SETTLE_TIMEOUT_SECONDS = 120.0
# The App's sweep runs every 3 s here (GITHUB_REDELIVERY_INTERVAL below).
SWEEP_GRACE_SECONDS = 20.0
# Short leases and polls so a trial recovers in seconds; the lost-delivery sweep runs often
# so deliveries refused while the App was down come back within the trial.
TRIAL_SETTINGS = {
    "WORKER_LEASE": "3s",
    "WORKER_CONCURRENCY": "4",
    "STACKSONA_POLL_MAX_INTERVAL": "1s",
    "GITHUB_REDELIVERY_INTERVAL": "3s",
    "STACKSONA_REQUIRE_APPROVAL_TOKEN": "true",
    "LOG_LEVEL": "INFO",
}


@dataclass
class TrialResult:
    number: int
    seed: int
    topology: Topology
    kills: list[Kill]
    deliveries: int
    answered: int
    stalls: Counter[str]
    findings: Findings
    seconds: float
    histories: list[str] = field(default_factory=list)
    logs: Path | None = None

    @property
    def violations(self) -> list[str]:
        recovery = [
            f"gates without progress {RECOVERY_TARGET_SECONDS:.0f}s after killing {k.target}: {k.stuck}"
            for k in self.kills
            if k.stuck
        ]
        return self.findings.violations + recovery


@dataclass(frozen=True)
class TrialPlan:
    backend: str
    topology: Topology | Literal["alternate"]  # alternate: split, serve, split, ... (PostgreSQL)
    runs: int
    kills: int
    workers: int
    keep_logs: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)


def run_trial(number: int, seed: int, plan: TrialPlan) -> TrialResult:
    topology: Topology = plan.topology if plan.topology != "alternate" else ("split" if number % 2 else "serve")
    workdir = Path(tempfile.mkdtemp(prefix=f"crash-trial-{number}-"))
    started = time.monotonic()
    with deployed(
        plan.backend, topology, workdir, TRIAL_SETTINGS | plan.extra_env, workers=plan.workers, graceful=False
    ) as d:
        script_decisions(d.stacksona)
        sender = JobSender(d.github, d.site.webhook_url)
        rng = random.Random(seed)  # noqa: S311 - reproducible trials, not secrets
        with Reviewer(d.stacksona, _derived(rng), delay=(0.2, 2.0)):
            with Stalls(d.github, d.stacksona, _derived(rng)) as stalls:
                kills = _stream_and_kill(sender, d.site, d.store, stalls, plan, rng)
            _settle(d.store, sender)
        findings = check(gather(d.github, d.store, sender.record), d.stacksona)
        histories = findings.histories(d.store)
    sent = sender.record.snapshot()
    result = TrialResult(
        number,
        seed,
        topology,
        kills,
        len(sent),
        sum(1 for delivery in sent if 200 <= delivery.status < 300),
        stalls.stalled,
        findings,
        time.monotonic() - started,
        histories=histories,
    )
    if result.violations or plan.keep_logs:
        result.logs = workdir
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _derived(rng: random.Random) -> random.Random:
    """A generator of its own for one thread, drawn from the trial's seed."""
    return random.Random(rng.random())  # noqa: S311 - reproducible trials, not secrets


def _stream_and_kill(
    sender: JobSender, site: AppSite, store: Store, stalls: Stalls, plan: TrialPlan, rng: random.Random
) -> list[Kill]:
    """Deliveries flow from a thread of their own while this one kills and restarts processes."""
    stream_rng = _derived(rng)
    done = threading.Event()

    def stream() -> None:
        for run in range(plan.runs):
            sender.run_of_jobs(1000 + run, stream_rng)
            time.sleep(stream_rng.uniform(0.1, 0.8))
        done.set()

    streamer = threading.Thread(target=stream, name="deliveries", daemon=True)
    streamer.start()
    kills = []
    for _ in range(plan.kills):
        time.sleep(rng.uniform(0.5, 4.0))
        kills.append(kill_and_restart(site, store, stalls, rng))
    streamer.join()
    return kills


def _settle(store: Store, sender: JobSender) -> None:
    """Until every gate is closed and every job the App answered 2xx has one; then, for a while longer,
    until the jobs whose every delivery failed have theirs too (they come back only through the App's sweep).

    Bounded: what is still missing then is reported by the checks.
    """
    answered = {(d.run_id, d.environment) for d in sender.record.snapshot() if 200 <= d.status < 300}
    _until_closed(store, answered, SETTLE_TIMEOUT_SECONDS)
    _until_closed(store, set(sender.record.jobs), SWEEP_GRACE_SECONDS)


def _until_closed(store: Store, jobs: set[JobKey], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gates = store.gates.list_gates(limit=ALL_GATES)
        if jobs <= {(g.run_id, g.environment) for g in gates} and all(g.state in FINAL_STATES for g in gates):
            return
        time.sleep(0.5)


def _line(result: TrialResult) -> str:
    kills = ", ".join(
        f"{k.target} ({k.open_gates} open, {k.in_flight} held, recovered {k.recovery:.1f}s)" for k in result.kills
    )
    counts = result.findings.counts
    return (
        f"trial {result.number:3d} seed {result.seed} {result.topology}: {result.answered}/{result.deliveries} "
        f"deliveries 2xx, {counts['gates']} gates, {sum(result.stalls.values())} calls stalled, kills [{kills}], "
        f"lost {counts['lost']}, decided twice {counts['decided_twice']}, "
        f"{len(result.violations)} violations ({result.seconds:.0f}s)"
    )


def summary(results: list[TrialResult], backend: str) -> str:
    kills = [k for r in results for k in r.kills]
    counts: Counter[str] = sum((r.findings.counts for r in results), Counter())
    stalls: Counter[str] = sum((r.stalls for r in results), Counter())
    worst = max((k.recovery for k in kills), default=0.0)
    targets = Counter(k.target for k in kills)
    return "\n".join(
        [
            f"backend {backend}: {len(results)} trials, {len(kills)} kills ({dict(sorted(targets.items()))}), "
            f"{sum(k.in_flight > 0 for k in kills)} of them with a call held in flight, "
            f"{sum(k.open_gates for k in kills)} gates open at the kills",
            f"deliveries {sum(r.deliveries for r in results)} ({sum(r.answered for r in results)} answered 2xx), "
            f"jobs {counts['jobs']} (never delivered: every attempt refused or unanswered, no redelivery got "
            f"through {counts['never_delivered']}), gates {counts['gates']} "
            f"(approved {counts['gate_approved']}, rejected {counts['gate_rejected']}, "
            f"superseded {counts['gate_superseded']})",
            f"faults: {sum(stalls.values())} calls stalled ({dict(sorted(stalls.items()))})",
            f"gates lost {counts['lost']}, decided twice {counts['decided_twice']}, "
            f"conflicting reviews {counts['conflicting']}, two Stacksona threads {counts['two_threads']}, "
            f"rejected after a killed attempt spent the token {counts['rejected_token_spent']}",
            f"worst recovery (kill -> next progress of every gate open at the kill, restart included): {worst:.1f}s "
            f"(target {RECOVERY_TARGET_SECONDS:.0f}s)",
            f"violations: {sum(len(r.violations) for r in results)}",
        ]
    )


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.crash_trials", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--topology",
        choices=("serve", "split", "alternate"),
        help="default: serve on SQLite, split on PostgreSQL; alternate: split and serve in turns",
    )
    parser.add_argument("--seed", type=int, help="default: drawn and printed")
    parser.add_argument("--runs", type=int, default=10, help="workflow runs per trial (1-3 environments each)")
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial")
    parser.add_argument("--workers", type=int, default=2, help="worker processes in the split topology")
    parser.add_argument("--keep-logs", action="store_true", help="keep every trial's App logs")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like an error, so the App's processes and the PostgreSQL schema are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # A caller killed in the middle of a request makes the simulators log a traceback: expected here.
    logging.getLogger("app.simulators").setLevel(logging.CRITICAL)
    topology: Topology | Literal["alternate"] = args.topology or ("serve" if args.backend == "sqlite" else "split")
    if topology != "serve" and args.backend == "sqlite":
        parser.error("the split topology (several worker replicas) needs PostgreSQL")
    seed = random.SystemRandom().randrange(1, 10**6) if args.seed is None else args.seed
    say(f"crash trials: backend {args.backend}, topology {topology}, seed {seed}")
    plan = TrialPlan(args.backend, topology, args.runs, args.kills, args.workers, args.keep_logs)
    results = []
    for number in range(1, args.trials + 1):
        result = run_trial(number, seed * 1000 + number, plan)
        results.append(result)
        say(_line(result))
        for violation in result.violations:
            say(f"  VIOLATION {violation}")
        for line in result.histories if result.violations else []:
            say(f"    {line}")
        if result.logs is not None:
            say(f"  logs: {result.logs}")
    say(summary(results, args.backend))
    return 1 if any(r.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
