"""B2, decision latency: from Stacksona's callback (or the 202 of an `allow`) to the review GitHub receives.

`python -m bench.latency [--backend sqlite|postgres|both] [--repetitions 3] [--samples 20] [--rate 100]`

The App runs as real processes against the simulators, as `serve` and as
`web` + `worker`, each idle and under B1's load (`--rate` distinct deliveries/s
that Stacksona allows, sent open loop by bench/loadgen.py, flowing for
`--lead-seconds` before the first sample), in turns, each turn on a fresh database. A sample is one gate:

* `callback`: Stacksona answers `pending_review`; once the App waits, the
  reviewer approves and Stacksona calls the App back; the time runs from that
  callback to the approval GitHub receives;
* `allow`: Stacksona allows at once; the time runs from the delivery's 202 to
  the approval GitHub receives.

Exits 1 if a sample's review never arrives (within `--timeout`).
"""

from __future__ import annotations

import argparse
import json
import pickle
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from app.simulators.github import GitHubSimulator
from app.simulators.github_apps import new_key_pair
from app.simulators.stacksona import StacksonaSimulator
from bench.acks import build_requests
from bench.common import (
    PeakMemory,
    Served,
    add_common_arguments,
    alternate,
    app_environment,
    backends,
    database_url,
    peak_line,
    percentile_ms,
    spread,
    table,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
APP_ID = 4242
REVIEWED, ALLOWED, LOADED = "staging-reviewed", "staging-allowed", "production"
TOPOLOGIES = ("serve", "web+worker")
FIRST_LOAD_RUN = 1_000_000
BUSY_RETRY_SECONDS = 0.2


@dataclass
class Sims:
    github: GitHubSimulator
    stacksona: StacksonaSimulator
    env: dict[str, str]
    secret: str
    tmp: Path
    next_run: Iterator[int]


@dataclass
class Turn:
    callback: list[float] = field(default_factory=list)  # seconds
    allow: list[float] = field(default_factory=list)
    peaks: dict[str, float] = field(default_factory=dict)
    missing: int = 0
    load: str = ""
    callbacks_refused: int = 0  # Stacksona's callbacks the App did not take (it does not retry them)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--samples", type=int, default=20, help="gates of each kind per turn")
    parser.add_argument("--rate", type=float, default=100.0, help="deliveries/s of the concurrent B1 load")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one review")
    parser.add_argument(
        "--lead-seconds",
        type=float,
        default=20.0,
        help="how long the load flows before the first sample: a worker slower than the load has a backlog by then",
    )
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES), help="comma-separated subset")
    args = parser.parse_args(argv)
    topologies = [name for name in args.topologies.split(",") if name]
    missing = 0
    with tempfile.TemporaryDirectory(prefix="stacksona-latency-") as tmp, _simulators(Path(tmp)) as sims:
        for backend in backends(args.backend):
            missing += _measure_backend(sims, backend, topologies, args)
    sys.stdout.write(
        "latency: every review arrived\n" if not missing else f"latency: WRONG: {missing} reviews missing\n"
    )
    return 1 if missing else 0


def _measure_backend(sims: Sims, backend: str, topologies: list[str], args: argparse.Namespace) -> int:
    turns: dict[str, list[Turn]] = {}
    contenders: dict[str, Callable[[], float]] = {}
    for topology in topologies:
        for loaded in (False, True):
            name = f"{topology}, {'under load' if loaded else 'idle'}"
            turns[name] = []
            contenders[name] = _contender(sims, backend, topology, loaded, args, turns[name])
    alternate(contenders, args.repetitions)
    head_row = ["App", "callback p50", "callback p99", "allow p50", "allow p99", "missing", "callbacks refused"]
    rows = [[*head_row, "load sent", "peak RSS"]]
    for name, done in turns.items():
        callback = [percentile_ms(turn.callback, 0.5) for turn in done]
        callback99 = [percentile_ms(turn.callback, 0.99) for turn in done]
        allow = [percentile_ms(turn.allow, 0.5) for turn in done]
        allow99 = [percentile_ms(turn.allow, 0.99) for turn in done]
        peaks: dict[str, float] = {}
        for turn in done:
            peaks |= {k: max(v, peaks.get(k, 0.0)) for k, v in turn.peaks.items()}
        rows.append(
            [
                name,
                spread(callback, "ms", 0),
                spread(callback99, "ms", 0),
                spread(allow, "ms", 0),
                spread(allow99, "ms", 0),
                str(sum(turn.missing for turn in done)),
                str(sum(turn.callbacks_refused for turn in done)),
                "; ".join(turn.load for turn in done if turn.load) or "-",
                peak_line(peaks),
            ]
        )
    head = (
        f"\n== B2 decision latency, {backend}: {args.repetitions} turns each, alternating; "
        f"{args.samples} gates of each kind per turn; load: {args.rate:.0f} deliveries/s (open loop) =="
    )
    sys.stdout.write(head + "\n" + table(rows) + "\n")
    sys.stdout.flush()
    return sum(turn.missing for done in turns.values() for turn in done)


def _contender(
    sims: Sims, backend: str, topology: str, loaded: bool, args: argparse.Namespace, turns: list[Turn]
) -> Callable[[], float]:
    def measure() -> float:
        turn = measure_turn(sims, backend, topology, loaded, args)
        turns.append(turn)
        return percentile_ms(turn.callback, 0.99)

    return measure


def measure_turn(sims: Sims, backend: str, topology: str, loaded: bool, args: argparse.Namespace) -> Turn:
    """Gates awaiting a reviewer are opened first; then, under the load if any, each is approved in turn
    (callback latency) and an `allow` is delivered beside it (allow latency, waited for at the end)."""
    turn = Turn()
    refused_before = len(sims.stacksona.callback_errors)
    with database_url(backend, sims.tmp) as url, _app(sims, topology, url) as (web, pids):
        waiting = _open_reviewed_gates(sims, web, args.samples, args.timeout)
        turn.missing += args.samples - len(waiting)
        load = _start_load(sims, web, args) if loaded else None
        try:
            with PeakMemory(pids) as memory:
                time.sleep(args.lead_seconds if loaded else 0.0)
                allowed = [_sample(sims, web, turn, run_id, thread, args.timeout) for run_id, thread in waiting]
                _wait_for_allowed(sims, turn, allowed, args.timeout)
        finally:
            if load is not None:
                turn.load = _finish_load(load)
        turn.peaks = dict(memory.peaks)
    turn.callbacks_refused = len(sims.stacksona.callback_errors) - refused_before
    return turn


def _open_reviewed_gates(sims: Sims, web: Served, count: int, timeout: float) -> list[tuple[int, str]]:
    """Gates Stacksona put in front of a reviewer: (run, thread) of each whose thread opened in time."""
    opened: list[tuple[int, str]] = []
    for _ in range(count):
        run_id = next(sims.next_run)
        # A thread left pending by an earlier turn (its App stopped first) must not pass for this one's.
        earlier = set(sims.stacksona.pending_threads())
        _deliver(sims, web, run_id, REVIEWED)
        if (thread := _wait(lambda e=earlier: _new_pending_thread(sims, e), timeout)) is not None:  # type: ignore[misc]
            opened.append((run_id, thread))
    return opened


def _sample(sims: Sims, web: Served, turn: Turn, run_id: int, thread: str, timeout: float) -> tuple[int, float]:
    """Approves one waiting gate and times its review; delivers an `allow` (returned: its run and 202 time)."""
    called = time.time()
    sims.stacksona.decide(thread, "approved")  # Stacksona then calls the App back
    if (review := _wait(lambda: _final_review_at(sims, run_id), timeout)) is None:
        turn.missing += 1
    else:
        turn.callback.append(max(0.0, review - called))
    allowed = next(sims.next_run)
    return allowed, _deliver(sims, web, allowed, ALLOWED)


def _wait_for_allowed(sims: Sims, turn: Turn, allowed: list[tuple[int, float]], timeout: float) -> None:
    """Under a load the worker cannot keep up with, an `allow` waits behind every gate delivered before it."""
    deadline = time.monotonic() + timeout
    for run_id, answered in allowed:
        left = max(0.0, deadline - time.monotonic())
        if (review := _wait(lambda r=run_id: _final_review_at(sims, r), left)) is None:  # type: ignore[misc]
            turn.missing += 1
        else:
            turn.allow.append(max(0.0, review - answered))


def _deliver(sims: Sims, web: Served, run_id: int, environment: str) -> float:
    """Delivers one job, again (same GUID, as a redelivery) while the App answers 503; returns when its 202 arrived."""
    payload = sims.github.open_deployment(owner="acme", repo="shop", run_id=run_id, environment=environment)
    guid = str(uuid.uuid4())
    while (
        response := sims.github.deliver(web.url + "/webhooks/github", payload, secret=sims.secret, delivery_id=guid)
    ).status_code == 503:
        time.sleep(BUSY_RETRY_SECONDS)
    if response.status_code != 202:
        raise RuntimeError(f"delivery answered {response.status_code}: {response.text}")
    return time.time()


def _new_pending_thread(sims: Sims, earlier: set[str]) -> str | None:
    return next((thread for thread in sims.stacksona.pending_threads() if thread not in earlier), None)


def _final_review_at(sims: Sims, run_id: int) -> float | None:
    reviews = sims.github.final_reviews(owner="acme", repo="shop", run_id=run_id)
    return reviews[0].received_at if reviews else None


def _wait(probe: Callable[[], T | None], timeout: float) -> T | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := probe()) is not None:
            return found
        time.sleep(0.002)
    return None


@contextmanager
def _app(sims: Sims, topology: str, url: str) -> Iterator[tuple[Served, Callable[[], dict[str, int]]]]:
    """The App on `url`: `serve`, or `web` and `worker`; Stacksona calls it back."""
    env = sims.env | {"DATABASE_URL": url}
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        command = "serve" if topology == "serve" else "web"
        web = Served(["app", command], env, sims.tmp / f"{command}-{tag}.log", cwd=sims.tmp)
        stack.callback(web.stop)
        web.wait_until_healthy()
        web.wait_for_line("start-up check")
        servers = {"": web}
        if topology != "serve":
            worker = Served(["app", "worker"], env, sims.tmp / f"worker-{tag}.log", cwd=sims.tmp)
            stack.callback(worker.stop)
            worker.wait_for_line("start-up check")
            servers["worker "] = worker
        sims.stacksona.callback_url = web.url + "/webhooks/stacksona"

        def pids() -> dict[str, int]:
            return {
                prefix + name: pid for prefix, server in servers.items() for name, pid in server.processes().items()
            }

        yield web, pids


def _start_load(sims: Sims, web: Served, args: argparse.Namespace) -> subprocess.Popen[str]:
    seconds = args.lead_seconds + args.samples * 2.0 + 30  # outlasts the samples; stopped when they are done
    count = int(args.rate * seconds)
    guids = [str(uuid.uuid4()) for _ in range(count)]
    first = next(sims.next_run) * 10_000 + FIRST_LOAD_RUN
    raw = build_requests(sims.github, sims.secret, guids, first_run=first)
    path = sims.tmp / f"load-{uuid.uuid4().hex[:6]}.pickle"
    path.write_bytes(pickle.dumps(raw))
    command = [sys.executable, "-m", "bench.loadgen", str(path), "--port", str(web.port), "--mode", "open"]
    command += ["--rate", str(args.rate), "--seconds", str(seconds), "--stop-file", str(path) + ".stop"]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # noqa: S603


def _finish_load(load: subprocess.Popen[str]) -> str:
    """Stops the load (it finishes the requests in flight) and says what it sent and how it was answered."""
    stop_file = Path(str(load.args[3]) + ".stop")  # type: ignore[index]
    stop_file.touch()
    try:
        out, _ = load.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        load.kill()
        load.wait(timeout=10)
        return "the load generator did not finish its requests in flight within 120 s"
    result = json.loads(out)
    statuses = ", ".join(f"{count} x {status}" for status, count in result["statuses"].items())
    return f"{result['answered'] / result['elapsed']:.0f}/s ({statuses}; p99 {result['p99_ms']:.0f} ms)"


@contextmanager
def _simulators(tmp: Path) -> Iterator[Sims]:
    pem, public = new_key_pair()
    api_key, secret = "sg_bench_" + secrets.token_hex(8), secrets.token_hex(16)
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public) as github,
        StacksonaSimulator(api_key=api_key) as stacksona,
    ):
        stacksona.script(REVIEWED, "pending_review")
        stacksona.script(ALLOWED, "allow")
        stacksona.script(LOADED, "allow")
        env = app_environment(
            private_pem=pem,
            secret=secret,
            api_key=api_key,
            app_id=APP_ID,
            github_url=github.url,
            stacksona_url=stacksona.url,
            database="",
        )
        yield Sims(github, stacksona, env, secret, tmp, iter(range(1, 10**9)))


if __name__ == "__main__":
    raise SystemExit(main())
