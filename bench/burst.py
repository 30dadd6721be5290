"""A burst of deployment gates, end to end: `python -m bench.burst --gates 1000`.

GitHub delivers `--gates` webhooks (runs of 10 environments each, a few of them
delivered twice) to the real App (HTTP in-process, worker thread, SQLite in a
temporary directory); Stacksona's policy answers at once (allow, or reject for
two environments). Prints the time to the last final review, the throughput and
the connections opened to each simulator, and exits 1 unless every gate got
exactly one final review.
"""

from __future__ import annotations

import argparse
import logging
import re
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.core.gate import FINAL_STATES
from app.core.secret import Secret
from app.http.routes import create_app
from app.runtime import build_runtime, open_database
from app.settings import Settings
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.github_apps import new_key_pair
from app.simulators.stacksona import StacksonaSimulator

ENVIRONMENTS = tuple(f"env-{n}" for n in range(10))
REJECTED = {"env-3", "env-7"}  # Stacksona's policy refuses these; the rest are allowed
INSTALLATIONS = 10
DUPLICATE_EVERY = 50  # every 50th job is delivered again: once redelivered (same GUID), once as a new delivery
BUSY_RETRY_SECONDS = 0.2
APP_ID = 4242


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description="A burst of gates, end to end.")
    parser.add_argument("--gates", type=int, default=1000, help="gates to open (rounded up to whole runs of 10)")
    parser.add_argument("--senders", type=int, default=8, help="webhooks GitHub sends at once")
    parser.add_argument("--worker-concurrency", type=int, default=4, help="WORKER_CONCURRENCY")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the last review")
    args = parser.parse_args(argv)
    # ERROR: the App's WARNING for each 503 (every database slot busy) is counted in the summary instead.
    logging.basicConfig(level=logging.ERROR, format="app: %(name)s: %(levelname)s %(message)s")
    if args.gates < 1:
        parser.error("--gates must be at least 1")
    runs = -(-args.gates // len(ENVIRONMENTS))
    with tempfile.TemporaryDirectory(prefix="stacksona-burst-") as tmp, _burst(Path(tmp), args) as burst:
        started = time.monotonic()
        _deliver_all(burst, runs, args.senders)
        delivered = time.monotonic() - started
        done = _wait_until_all_closed(burst, runs * len(ENVIRONMENTS), args.timeout)
        elapsed = time.monotonic() - started
        return _report(burst, runs, delivered, elapsed, done)


@contextmanager
def _burst(tmp: Path, args: argparse.Namespace) -> Iterator[Burst]:
    pem, public = new_key_pair()
    api_key, secret = "sg_bench_" + secrets.token_hex(8), secrets.token_hex(16)
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public) as github,
        StacksonaSimulator(api_key=api_key) as stacksona,
    ):
        for environment in ENVIRONMENTS:
            stacksona.script(environment, "reject" if environment in REJECTED else "allow")
        settings = Settings(
            github_app_id=APP_ID,
            github_private_key=Secret(pem),
            github_webhook_secret=Secret(secret),
            stacksona_gate_url=stacksona.url,
            stacksona_api_key=Secret(api_key),
            github_api_url=github.url,
            database_url=f"sqlite:///{tmp / 'burst.db'}",
            worker_concurrency=args.worker_concurrency,
        )
        with _app(settings) as app_url:
            yield Burst(github, stacksona, app_url, secret, [])


@contextmanager
def _app(settings: Settings) -> Iterator[str]:
    runtime = build_runtime(settings, engine=open_database(settings.database_url))
    worker = runtime.worker(idle_seconds=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="burst-worker", daemon=True)
    thread.start()
    try:
        with LoopbackServer(create_app(settings, runtime.store, on_new_work=worker.wakeup.set)) as server:
            yield server.base_url
    finally:
        stop.set()
        worker.wakeup.set()
        thread.join(timeout=30)
        runtime.close()


def _deliver_all(burst: Burst, runs: int, senders: int) -> None:
    jobs = _jobs(runs)
    with ThreadPoolExecutor(senders, thread_name_prefix="github-delivery") as pool:
        list(pool.map(lambda job, n: _deliver_job(burst, job, n), jobs, range(len(jobs))))


def _deliver_job(burst: Burst, job: Job, n: int) -> None:
    payload = burst.github.open_deployment(
        owner=job.owner,
        repo="shop",
        installation_id=job.installation,
        run_id=job.run_id,
        environment=job.environment,
    )
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
        time.sleep(0.05)
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


def _report(burst: Burst, runs: int, delivered: float, elapsed: float, done: bool) -> int:
    gates = runs * len(ENVIRONMENTS)
    finals = Counter((r.owner, r.run_id, r.body.get("environment_name")) for r in burst.github.final_reviews())
    reviews = burst.github.reviews
    refused = sum(1 for review in reviews if review.status != 204)  # e.g. 422 to a job that joined after the verdict
    expected = {(job.owner, job.run_id, job.environment) for job in _jobs(runs)}
    wrong = sum(1 for job in expected if finals[job] != 1) + len(set(finals) - expected)
    states = {state: count for state, count in _metrics(burst, "stacksona_gate_gates").items() if count}
    lines = [
        f"gates:                      {gates} ({runs} runs x {len(ENVIRONMENTS)} environments, "
        f"{INSTALLATIONS} installations)",
        f"deliveries sent:            {len(burst.github.deliveries)} "
        f"({len(burst.busy_answers)} answered 503 and were sent again)",
        f"all delivered after:        {delivered:.2f} s",
        f"last final review after:    {elapsed:.2f} s" + ("" if done else " (TIMED OUT)"),
        f"throughput:                 {gates / elapsed:.1f} gates/s",
        f"reviews received by GitHub: {len(reviews)} ({sum(finals.values())} final, "
        f"{len(burst.github.status_reports())} status reports, {refused} refused), "
        f"{len(burst.github.token_requests)} token requests",
        f"gate states:                {states}",
        f"webhook answers:            {_metrics(burst, 'stacksona_gate_webhooks_total')}",
        f"connections to GitHub:      {burst.github.connections_opened}",
        f"connections to Stacksona:   {burst.stacksona.connections_opened}",
    ]
    ok = done and wrong == 0 and _all_closed(burst, gates)
    verdict = "exactly one final review per gate" if ok else f"WRONG: {wrong} gates without exactly one final review"
    sys.stdout.write("\n".join([*lines, f"burst: {verdict}", ""]))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
