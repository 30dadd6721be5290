"""B3, a burst of deployment gates end to end: `python -m bench.burst [--gates 1000] [--backend sqlite|postgres|both]`.

GitHub delivers `--gates` webhooks (runs of 10 environments each, a few of them
delivered twice) to the real App (`python -m app serve`: gunicorn and the worker in one
process; with `--topology split`, `web --processes 1` and `worker` side by side) on SQLite
and on PostgreSQL; Stacksona's policy answers at once (allow, or reject for two environments).
In turns with it, `bench.baseline_worker` makes the same calls to fresh simulators from a
minimal httpx loop with the same concurrency. Prints, per backend,
both times and throughputs (median and range), their ratio, the worker's throughput while
deliveries are still being acknowledged and after, the peak memory of every process and the
connections opened, and exits 1 unless every gate got exactly one final review.
docs/benchmarks.md ("B3") records the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.core.gate import FINAL_STATES
from app.simulators.github import GitHubSimulator
from app.simulators.github_apps import new_key_pair
from app.simulators.stacksona import StacksonaSimulator
from bench.common import (
    PeakMemory,
    Served,
    add_common_arguments,
    alternate,
    app_environment,
    backends,
    database_url,
    free_port,
    peak_line,
    ratio,
    spread,
    table,
)

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENTS = tuple(f"env-{n}" for n in range(10))
REJECTED = {"env-3", "env-7"}  # Stacksona's policy refuses these; the rest are allowed
INSTALLATIONS = 10
DUPLICATE_EVERY = 50  # every 50th job is delivered again: once redelivered (same GUID), once as a new delivery
BUSY_RETRY_SECONDS = 0.2
APP_ID = 4242
# The baseline once more with this many calls in flight: what the simulators can take.
SIMULATOR_PROBE_CONCURRENCY = 16
TOPOLOGIES = ("serve", "split")


@dataclass(frozen=True)
class Job:
    owner: str
    installation: int
    run_id: int
    environment: str


@dataclass
class Burst:
    github: GitHubSimulator
    stacksona: StacksonaSimulator
    app_url: str
    secret: str
    busy_answers: list[str]  # GUIDs answered 503 (appended from the sender threads)


@dataclass(frozen=True)
class Simulators:
    github: GitHubSimulator
    stacksona: StacksonaSimulator
    private_pem: str
    api_key: str
    secret: str


@dataclass
class Runs:
    """Everything measured for one backend, turn by turn."""

    during: list[float] = field(default_factory=list)  # worker gates/s while deliveries are acknowledged
    after: list[float] = field(default_factory=list)  # worker gates/s once all are
    failures: list[str] = field(default_factory=list)
    peaks: dict[str, float] = field(default_factory=dict)
    connections: Counter[str] = field(default_factory=Counter)
    summaries: list[str] = field(default_factory=list)
    baseline_calls: dict[str, int] = field(default_factory=dict)  # the last turn's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description="B3: a burst of gates, end to end.")
    parser.add_argument("--gates", type=int, default=1000, help="gates to open (rounded up to whole runs of 10)")
    parser.add_argument("--senders", type=int, default=8, help="webhooks GitHub sends at once")
    parser.add_argument("--worker-concurrency", type=int, default=4, help="WORKER_CONCURRENCY (and the baseline's)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the last review")
    parser.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="serve",
        help="serve: one process; split: `web --processes 1` and `worker`",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    # ERROR: the App's WARNING for each 503 (every database slot busy) is counted in the summary instead.
    logging.basicConfig(level=logging.ERROR, format="bench: %(name)s: %(levelname)s %(message)s")
    if args.gates < 1 or args.repetitions < 1:
        parser.error("--gates and --repetitions must be at least 1")
    runs = -(-args.gates // len(ENVIRONMENTS))
    with tempfile.TemporaryDirectory(prefix="stacksona-burst-") as tmp:
        probe = _baseline_run(Path(tmp), runs, SIMULATOR_PROBE_CONCURRENCY, Runs())
        sys.stdout.write(
            f"simulators' capacity: {runs * len(ENVIRONMENTS) / probe:.0f} gates/s "
            f"(the baseline with {SIMULATOR_PROBE_CONCURRENCY} calls in flight)\n"
        )
        failed = [backend for backend in backends(args.backend) if not _measure_backend(backend, Path(tmp), runs, args)]
    return 1 if failed else 0


def _measure_backend(backend: str, tmp: Path, runs: int, args: argparse.Namespace) -> bool:
    measured = Runs()
    concurrency = args.worker_concurrency
    times = alternate(
        {
            "App": lambda: _app_run(backend, tmp, runs, args, measured),
            "baseline": lambda: _baseline_run(tmp, runs, concurrency, measured),
        },
        args.repetitions,
    )
    gates = runs * len(ENVIRONMENTS)
    rates = {name: [gates / seconds for seconds in values] for name, values in times.items()}
    rows = [["", "time", "gates/s"]] + [
        [name, spread(times[name], "s", 2), spread(rates[name], "", 0)] for name in ("App", "baseline")
    ]
    lines = [
        f"B3 burst on {backend} ({args.topology}): {gates} gates ({runs} runs x {len(ENVIRONMENTS)} environments, "
        f"{INSTALLATIONS} installations), concurrency {concurrency}, {args.repetitions} turns each, "
        "median (min-max)",
        table(rows),
        f"App / baseline throughput:  {ratio(rates['App'], rates['baseline'])}",
        f"worker while acks arrive:   {spread(measured.during, 'gates/s', 0)}; "
        f"after: {spread(measured.after, 'gates/s', 0)}",
        f"peak RSS:                   {peak_line(measured.peaks)}",
        f"connections to GitHub:      {measured.connections['github']} (App, all turns); "
        f"connections to Stacksona: {measured.connections['stacksona']}",
        *measured.summaries[-1:],
        f"  the baseline's last turn: {measured.baseline_calls}",
    ]
    ok = not measured.failures
    verdict = "exactly one final review per gate" if ok else "WRONG: " + "; ".join(measured.failures)
    sys.stdout.write("\n".join([*lines, f"burst: {verdict}", "", ""]))
    return ok


@contextmanager
def _simulators() -> Iterator[Simulators]:
    pem, public = new_key_pair()
    api_key, secret = "sg_bench_" + secrets.token_hex(8), secrets.token_hex(16)
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public) as github,
        StacksonaSimulator(api_key=api_key) as stacksona,
    ):
        for environment in ENVIRONMENTS:
            stacksona.script(environment, "reject" if environment in REJECTED else "allow")
        yield Simulators(github, stacksona, pem, api_key, secret)


def _environment(sims: Simulators, database: str) -> dict[str, str]:
    return app_environment(
        private_pem=sims.private_pem,
        secret=sims.secret,
        api_key=sims.api_key,
        app_id=APP_ID,
        github_url=sims.github.url,
        stacksona_url=sims.stacksona.url,
        database=database,
    )


def _app_run(backend: str, tmp: Path, runs: int, args: argparse.Namespace, measured: Runs) -> float:
    """One turn of the App: every delivery sent, then every gate closed; returns the seconds it all took."""
    with _simulators() as sims, database_url(backend, tmp) as database:
        env = _environment(sims, database) | {
            "WORKER_CONCURRENCY": str(args.worker_concurrency),
            "LOG_LEVEL": "WARNING",
        }
        served, worker = _start_app(args.topology, env, tmp / f"app-{backend}.log")
        try:
            served.wait_until_healthy()
            burst = Burst(sims.github, sims.stacksona, served.url, sims.secret, [])
            beside = {} if worker is None else {"worker": worker.process.pid}
            with PeakMemory(lambda: served.processes() | beside | {"bench": os.getpid()}) as memory:
                started = time.monotonic()
                _deliver_all(burst, runs, args.senders)
                delivered = time.monotonic() - started
                closed_then = len(burst.github.final_reviews())
                done = _wait_until_all_closed(burst, runs * len(ENVIRONMENTS), args.timeout)
                elapsed = time.monotonic() - started
            _record_app_run(measured, burst, runs, (delivered, elapsed, closed_then, done), memory.peaks)
        finally:
            served.stop()
            if worker is not None:
                worker.stop()
        return elapsed


def _start_app(topology: str, env: dict[str, str], log: Path) -> tuple[Served, Served | None]:
    """The App as one `serve`, or as `web` (one process) with a `worker` beside it; the worker writes to `log` too."""
    if topology == "serve":
        return Served(["app", "serve"], env, log, cwd=ROOT), None
    web = Served(["app", "web", "--processes", "1"], env, log, cwd=ROOT)
    return web, Served(["app", "worker"], env | {"WORKER_HEALTH_PORT": str(free_port())}, log, cwd=ROOT)


def _record_app_run(
    measured: Runs, burst: Burst, runs: int, timing: tuple[float, float, int, bool], peaks: dict[str, float]
) -> None:
    delivered, elapsed, closed_then, done = timing
    gates = runs * len(ENVIRONMENTS)
    measured.during.append(closed_then / delivered)
    if elapsed - delivered > 0.01:
        measured.after.append((gates - closed_then) / (elapsed - delivered))
    for name, mb in peaks.items():
        measured.peaks[name] = max(measured.peaks.get(name, 0.0), mb)
    measured.connections.update(github=burst.github.connections_opened, stacksona=burst.stacksona.connections_opened)
    summary, problem = _report(burst, runs, delivered, elapsed, done)
    measured.summaries.append(summary)
    if problem:
        measured.failures.append(problem)


def _baseline_run(tmp: Path, runs: int, concurrency: int, measured: Runs) -> float:
    """One turn of the baseline against fresh simulators; returns the seconds its calls took."""
    with _simulators() as sims:
        jobs = _jobs(runs)
        payloads = [sims.github.open_deployment(**_deployment(job)) for job in jobs]
        path = tmp / "baseline-jobs.json"
        path.write_text(json.dumps([_baseline_job(job, payload) for job, payload in zip(jobs, payloads, strict=True)]))
        command = [
            sys.executable,
            "-m",
            "bench.baseline_worker",
            "--jobs",
            str(path),
            "--concurrency",
            str(concurrency),
        ]
        process = subprocess.Popen(command, env=_environment(sims, ""), cwd=ROOT, stdout=subprocess.PIPE)  # noqa: S603
        with PeakMemory(lambda: {"baseline": process.pid}) as memory:
            out, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            raise SystemExit(f"the baseline failed (exit {process.returncode})")
        finals = Counter((r.owner, r.run_id, r.body.get("environment_name")) for r in sims.github.final_reviews())
        if len(finals) != len(jobs) or set(finals.values()) != {1}:
            measured.failures.append("the baseline did not review every gate exactly once")
    for name, mb in memory.peaks.items():
        measured.peaks[name] = max(measured.peaks.get(name, 0.0), mb)
    answer = json.loads(out)
    measured.baseline_calls = answer["calls"]
    return float(answer["seconds"])


def _deployment(job: Job) -> dict[str, Any]:
    """The simulator's waiting job for `job`; one repository per installation, each with its own id."""
    return {
        "owner": job.owner,
        "repo": "shop",
        "installation_id": job.installation,
        "repository_id": 1000 + job.installation,
        "run_id": job.run_id,
        "environment": job.environment,
    }


def _baseline_job(job: Job, payload: dict[str, Any]) -> dict[str, Any]:
    return asdict(job) | {"repo": "shop", "deployment_id": payload["deployment"]["id"]}


def _deliver_all(burst: Burst, runs: int, senders: int) -> None:
    jobs = _jobs(runs)
    with ThreadPoolExecutor(senders, thread_name_prefix="github-delivery") as pool:
        list(pool.map(lambda job, n: _deliver_job(burst, job, n), jobs, range(len(jobs))))


def _deliver_job(burst: Burst, job: Job, n: int) -> None:
    payload = burst.github.open_deployment(**_deployment(job))
    guid = secrets.token_hex(16)
    _deliver(burst, payload, guid)
    if n % DUPLICATE_EVERY == 0:
        _deliver(burst, payload, guid)  # a redelivery: same GUID
        _deliver(burst, payload, secrets.token_hex(16))  # another delivery for the same job


def _deliver(burst: Burst, payload: dict[str, Any], guid: str) -> None:
    """One delivery, sent again (same GUID, as a redelivery would) while the App answers 503."""
    url = burst.app_url + "/webhooks/github"
    while True:
        response = burst.github.deliver(url, payload, secret=burst.secret, delivery_id=guid)
        if response.status_code != 503:
            break
        burst.busy_answers.append(guid)
        time.sleep(BUSY_RETRY_SECONDS)
    if response.status_code not in (200, 202):
        raise SystemExit(f"delivery {guid} answered {response.status_code}: {response.text}")


def _wait_until_all_closed(burst: Burst, gates: int, timeout: float) -> bool:
    """Until GitHub has a final review for every gate and the App has closed every gate."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(burst.github.final_reviews()) >= gates and _all_closed(burst, gates):
            return True
        time.sleep(0.1)
    return False


def _all_closed(burst: Burst, gates: int) -> bool:
    states = _metrics(burst, "stacksona_gate_gates")
    return sum(states.get(state, 0) for state in FINAL_STATES) == gates


def _metrics(burst: Burst, name: str) -> dict[str, int]:
    """One metric of the App's /metrics page by label value (read over HTTP: the store is the App's business)."""
    page = httpx.get(burst.app_url + "/metrics", timeout=10).text
    # prometheus-client writes sample values as floats ("12.0").
    found = (re.fullmatch(name + r'\{\w+="([^"]*)"\} ([0-9.e+]+)', line) for line in page.splitlines())
    return {match[1]: int(float(match[2])) for match in found if match}


def _jobs(runs: int) -> list[Job]:
    """One waiting job per gate; the runs spread over the installations."""
    return [
        Job(f"org-{run % INSTALLATIONS + 1}", run % INSTALLATIONS + 1, 100_000 + run, environment)
        for run in range(runs)
        for environment in ENVIRONMENTS
    ]


def _report(burst: Burst, runs: int, delivered: float, elapsed: float, done: bool) -> tuple[str, str | None]:
    """The last turn's details, and what went wrong (None: every gate got exactly one final review)."""
    gates = runs * len(ENVIRONMENTS)
    finals = Counter((r.owner, r.run_id, r.body.get("environment_name")) for r in burst.github.final_reviews())
    reviews = burst.github.reviews
    refused = sum(1 for review in reviews if review.status != 204)  # e.g. 422 to a job that joined after the verdict
    expected = {(job.owner, job.run_id, job.environment) for job in _jobs(runs)}
    wrong = sum(1 for job in expected if finals[job] != 1) + len(set(finals) - expected)
    states = {state: count for state, count in _metrics(burst, "stacksona_gate_gates").items() if count}
    stacksona = burst.stacksona
    lines = [
        f"last App turn: {len(burst.github.deliveries)} deliveries ({len(burst.busy_answers)} answered 503 and were "
        f"sent again), all acknowledged after {delivered:.2f} s, last final review after {elapsed:.2f} s"
        + ("" if done else " (TIMED OUT)"),
        f"  GitHub: {len(reviews)} reviews ({sum(finals.values())} final, {len(burst.github.status_reports())} status "
        f"reports, {refused} refused), {len(burst.github.token_requests)} token requests, "
        f"{len(burst.github.contents.requests)} policy-file reads, "
        f"{len(burst.github.deployments.calls('deployments'))} deployments lists, "
        f"{len(burst.github.deployments.calls('deployment_statuses'))} deployment statuses, "
        f"{len(burst.github.deployments.calls('compare'))} comparisons; Stacksona: {len(stacksona.requests)} creates, "
        f"{len(stacksona.lookups)} lookups, {len(stacksona.events)} timeline events",
        f"  gate states: {states}; webhook answers: {_metrics(burst, 'stacksona_gate_webhooks_total')}",
    ]
    ok = done and wrong == 0 and _all_closed(burst, gates)
    return "\n".join(lines), None if ok else f"{wrong} gates without exactly one final review" + (
        "" if done else " (timed out)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
