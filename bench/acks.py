"""B1, acks: how fast the App answers GitHub's deliveries, against baselines on the same gunicorn settings.

`python -m bench.acks [--backend sqlite|postgres|both] [--repetitions 3] [--seconds 10] [--rate-seconds 60]`

Contenders, measured in turns, each on a fresh database and a fresh server process tree:
`echo`, `verify` (+ signature and payload parsing), `insert` (+ one durable
insert per request) from bench/baseline_app.py, then `stacksona-gate web`,
`stacksona-gate serve` (with its in-process worker deciding every gate against
the simulators) and `split` (`web` beside a `stacksona-gate worker` process
deciding every gate: the topology docs/deploy.md gives for PostgreSQL).
Every request is a distinct signed ~7 KB delivery (the captured one of
tests/fixtures, each with its own run and GUID), sent by bench/loadgen.py:
first as fast as `--connections` clients can (throughput), then at `--rate`
deliveries/s for `--rate-seconds` (latency, open loop).
Afterwards every delivery answered 2xx must be in the database with a gate of
its own; the command exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import json
import pickle
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

from sqlalchemy import text

from app.http.signature import sign
from app.simulators.github import GitHubSimulator
from app.simulators.github_apps import new_key_pair
from app.simulators.stacksona import StacksonaSimulator
from app.store.engine import make_engine
from bench.common import (
    CAPTURED_CALLBACK,
    CAPTURED_DELIVERY,
    CAPTURED_DEPLOYMENT,
    CAPTURED_INSTALLATION,
    CAPTURED_OWNER,
    CAPTURED_REPO,
    CAPTURED_REPOSITORY_ID,
    CAPTURED_RUN,
    PeakMemory,
    Served,
    add_common_arguments,
    alternate,
    app_environment,
    backends,
    cpu_seconds,
    database_url,
    peak_line,
    postgres_server_pids,
    ratio,
    spread,
    table,
)

ROOT = Path(__file__).resolve().parent.parent
APP_ID = 4242
CONTENDERS = ("echo", "verify", "insert", "web", "serve", "split")
STORING = ("insert", "web", "serve", "split")
APP = ("web", "serve", "split")
WARM_UP = 300
# Request budget per second of a closed-loop run: above what any contender answers here.
BUDGET_PER_SECOND = 3000


@dataclass
class World:
    github: GitHubSimulator
    stacksona: StacksonaSimulator
    env: dict[str, str]  # the App's environment, DATABASE_URL aside
    requests: Path  # the deliveries of the throughput runs (pickled raw requests)
    warm_up: Path
    at_rate: Path  # the deliveries of the fixed-rate runs
    guids: list[str]
    at_rate_guids: list[str]
    tmp: Path


class LoadSummary(TypedDict):
    """The JSON line bench/loadgen.py writes (its `summary()`), typed so each figure is read as what it is."""

    statuses: dict[str, int]  # answers per HTTP status; JSON made the status a string
    # Indexes of the requests answered 2xx. Always written; measure() pops it once checked against the database.
    accepted: NotRequired[list[int]]
    errors: int
    answered: int
    elapsed: float
    throughput: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_seconds: float


@dataclass
class Run:
    """One contender's turn: what the load generator saw, the peaks of memory, what the database holds."""

    load: LoadSummary
    peaks: dict[str, float] = field(default_factory=dict)
    problem: str | None = None  # an acknowledged delivery not stored
    cpu_ms: tuple[float, float] | None = None  # per 2xx: the server's processes, PostgreSQL's (throughput runs)

    @property
    def throughput(self) -> float:
        return self.load["throughput"]

    @property
    def p99(self) -> float:
        return self.load["p99_ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.acks", description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    parser.add_argument("--rate", type=float, default=100.0, help="deliveries/s of the latency runs")
    parser.add_argument("--rate-seconds", type=float, default=60.0, help="length of each latency run (0: none)")
    parser.add_argument(
        "--connections",
        type=int,
        default=12,
        help="concurrent clients of the throughput runs (default: below the 14 database threads of one process)",
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    args = parser.parse_args(argv)
    contenders = [name for name in args.contenders.split(",") if name]
    if unknown := set(contenders) - set(CONTENDERS):
        parser.error(f"unknown contenders {sorted(unknown)}; expected some of {CONTENDERS}")
    count, at_rate = int(args.seconds * BUDGET_PER_SECOND) + 1, int(args.rate * args.rate_seconds) + 1
    with tempfile.TemporaryDirectory(prefix="stacksona-acks-") as tmp, _world(Path(tmp), count, at_rate) as world:
        _say(f"requests: {count} distinct signed deliveries of {_body_size(world)} bytes")
        _say(loadgen_ceiling(world, args.seconds, args.connections))
        problems: list[str] = []
        for backend in backends(args.backend):
            problems += _measure_backend(world, backend, contenders, args)
    for problem in problems:
        _say(f"WRONG: {problem}")
    _say("acks: every 2xx stored with a gate of its own" if not problems else "acks: FAILED")
    return 1 if problems else 0


def _measure_backend(world: World, backend: str, contenders: Sequence[str], args: argparse.Namespace) -> list[str]:
    runs: dict[str, list[Run]] = {name: [] for name in contenders}
    latency: dict[str, list[Run]] = {name: [] for name in contenders}

    def turn(name: str) -> float:
        throughput, at_rate = measure(world, name, backend, args)
        runs[name].append(throughput)
        if at_rate is not None:
            latency[name].append(at_rate)
        return throughput.throughput

    # partial binds each name now (a bare lambda would see the loop's last) and, unlike a defaulted lambda, is typed.
    figures = alternate({name: functools.partial(turn, name) for name in contenders}, args.repetitions)
    _say(_report(backend, contenders, figures, runs, latency, args))
    return [
        f"{backend} {name}: {run.problem}" for name in contenders for run in runs[name] + latency[name] if run.problem
    ]


def measure(world: World, name: str, backend: str, args: argparse.Namespace) -> tuple[Run, Run | None]:
    """One turn of one contender on a fresh database: warm up, throughput, then the fixed rate; check what was stored.

    Both loads send deliveries of their own, so each run's 2xx can be checked against the database.
    """
    cycle = ["--cycle"] if name not in STORING else []
    closed = ["--mode", "closed", "--connections", str(args.connections), *cycle]
    with database_url(backend, world.tmp) as url:
        log = world.tmp / f"{name}-{uuid.uuid4().hex[:6]}.log"
        server = Topology(name, world.env | {"DATABASE_URL": url}, log, cwd=world.tmp)
        try:
            server.wait_until_ready()
            loadgen(world.warm_up, server.port, ["--mode", "closed", "--connections", "8", *cycle], 2.0)
            with PeakMemory(server.processes) as peaks:
                before = _cpu_now(server, backend)
                throughput = Run(loadgen(world.requests, server.port, closed, args.seconds))
                throughput.cpu_ms = _cpu_per_ack(before, _cpu_now(server, backend), throughput)
                at_rate = None
                if args.rate_seconds > 0:
                    open_loop = ["--mode", "open", "--rate", str(args.rate)]
                    at_rate = Run(loadgen(world.at_rate, server.port, open_loop, args.rate_seconds))
        finally:
            server.stop()
        for run, guids in ((throughput, world.guids), (at_rate, world.at_rate_guids)):
            if run is None:
                continue
            run.peaks = dict(peaks.peaks)
            accepted = {guids[i] for i in run.load.pop("accepted")}
            if name in STORING:
                run.problem = unstored(url, name, accepted)
        return throughput, at_rate


def _cpu_now(server: Topology, backend: str) -> tuple[float, float]:
    """CPU used so far by the server's process tree and, on PostgreSQL, by the database server (all of it)."""
    database = cpu_seconds(postgres_server_pids()) if backend == "postgres" else 0.0
    return cpu_seconds(server.processes().values()), database


def _cpu_per_ack(before: tuple[float, float], after: tuple[float, float], run: Run) -> tuple[float, float]:
    acked = max(1, len(run.load["accepted"]))
    (app_before, db_before), (app_after, db_after) = before, after
    return (app_after - app_before) * 1000 / acked, (db_after - db_before) * 1000 / acked


def _command(name: str) -> list[str]:
    if name in APP:
        return ["app", "web" if name == "split" else name]
    return ["bench.baseline_app", name]


class Topology:
    """A contender's processes: its server and, for `split`, a worker process beside it."""

    def __init__(self, name: str, env: dict[str, str], log: Path, *, cwd: Path) -> None:
        self.name = name
        self.server = Served(_command(name), env, log, cwd=cwd)
        worker_log = log.with_name(log.stem + "-worker.log")
        self.worker = Served(["app", "worker"], env, worker_log, cwd=cwd) if name == "split" else None

    @property
    def port(self) -> int:
        return self.server.port

    def wait_until_ready(self) -> None:
        self.server.wait_until_healthy()
        if self.name in APP:  # start-up checks import githubkit and take CPU: measured after them
            self.server.wait_for_line("start-up check")
        if self.worker is not None:
            self.worker.wait_for_line("start-up check")

    def processes(self) -> dict[str, int]:
        found = self.server.processes()
        if self.worker is not None:
            found["worker"] = self.worker.process.pid
        return found

    def stop(self) -> None:
        self.server.stop()
        if self.worker is not None:
            self.worker.stop()


def loadgen(requests: Path, port: int, arguments: list[str], seconds: float) -> LoadSummary:
    command = [sys.executable, "-m", "bench.loadgen", str(requests), "--port", str(port), "--seconds", str(seconds)]
    done = subprocess.run(  # noqa: S603 - our own module
        [*command, *arguments], cwd=ROOT, capture_output=True, text=True, check=False, timeout=seconds * 4 + 120
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr[-2000:]}")
    result: LoadSummary = json.loads(done.stdout)
    return result


def unstored(url: str, name: str, accepted: set[str]) -> str | None:
    """None when every accepted delivery is stored (web/serve: each with a gate of its own), else what is wrong."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if name == "insert":
                rows = conn.execute(text("SELECT delivery_id, delivery_id FROM bench_acks")).all()
            else:
                rows = conn.execute(text("SELECT delivery_id, gate_id FROM deliveries")).all()
    finally:
        engine.dispose()
    stored = {row[0]: row[1] for row in rows}
    missing = accepted - stored.keys()
    if missing:
        return f"{len(missing)} of {len(accepted)} deliveries answered 2xx are not stored"
    gates = {stored[guid] for guid in accepted}
    if len(gates) != len(accepted):
        return f"{len(accepted)} deliveries of distinct runs answered 2xx share {len(gates)} gates"
    return None


def loadgen_ceiling(world: World, seconds: float, connections: int) -> str:
    """What the load generator sends to a minimal server, and echo as loadgen and wrk measure it."""
    port_file = world.tmp / "sink.port"
    sink = subprocess.Popen([sys.executable, "-m", "bench.loadgen", str(port_file), "--mode", "sink"], cwd=ROOT)  # noqa: S603
    try:
        while not port_file.is_file() or not port_file.read_text():
            time.sleep(0.05)
        closed = ["--mode", "closed", "--connections", str(connections), "--cycle"]
        alone = loadgen(world.requests, int(port_file.read_text()), closed, seconds)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    line = f"load generator alone (minimal asyncio server, same 2 cores): {alone['throughput']:.0f} req/s"
    line += f", {1e6 * alone['cpu_seconds'] / max(1, alone['answered']):.0f} us of its CPU per request"
    return line + "\n" + _echo_by_wrk(world, seconds, connections)


def _echo_by_wrk(world: World, seconds: float, connections: int) -> str:
    """Echo measured by loadgen and by wrk (C), one after the other: same figure means loadgen is not the limit."""
    wrk = Path("/usr/bin/wrk")
    if not wrk.is_file():
        return "wrk not installed: echo not cross-checked"
    body = world.tmp / "body.json"
    raw = pickle.loads(world.warm_up.read_bytes())[0]  # noqa: S301 - written by this process
    body.write_bytes(raw.split(b"\r\n\r\n", 1)[1])
    signature = sign(world.env["GITHUB_WEBHOOK_SECRET"], body.read_bytes())
    server = Served(
        _command("echo"),
        world.env | {"DATABASE_URL": f"sqlite:///{world.tmp / 'echo.db'}"},
        world.tmp / "echo-wrk.log",
        cwd=world.tmp,
    )
    try:
        server.wait_until_healthy()
        closed = ["--mode", "closed", "--connections", str(connections), "--cycle"]
        by_loadgen = loadgen(world.requests, server.port, closed, seconds)["throughput"]
        command = [
            str(wrk),
            "-t2",
            f"-c{connections}",
            f"-d{max(1, int(seconds))}s",
            "-s",
            str(ROOT / "bench/post.lua"),
        ]
        out = subprocess.run(  # noqa: S603
            [*command, server.url + "/webhooks/github"],
            env={"BENCH_BODY": str(body), "BENCH_SIGNATURE": signature},
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    finally:
        server.stop()
    by_wrk = next((line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec:")), "n/a")
    return f"echo, one turn each: loadgen {by_loadgen:.0f} req/s, wrk {by_wrk} req/s"


def _report(
    backend: str,
    contenders: Sequence[str],
    figures: Mapping[str, list[float]],
    runs: Mapping[str, list[Run]],
    latency: Mapping[str, list[Run]],
    args: argparse.Namespace,
) -> str:
    echo = figures.get("echo", [])
    echo_p99 = [run.p99 for run in latency.get("echo", [])]
    cpu_head = "CPU/ack ms: App + PostgreSQL" if backend == "postgres" else "CPU/ack ms"
    columns = ["contender", "acks/s", "x echo", f"p50 @{args.rate:.0f}/s", "p99", "p99 x echo", "non-2xx", cpu_head]
    rows = [[*columns, "peak RSS"]]
    for name in contenders:
        p99s = [run.p99 for run in latency[name]]
        p50s = [run.load["p50_ms"] for run in latency[name]]
        refused = sum(sum(v for k, v in run.load["statuses"].items() if not k.startswith("2")) for run in runs[name])
        peaks = _max_peaks(run.peaks for run in runs[name] + latency[name])
        rows.append(
            [
                name,
                spread(figures[name], digits=0),
                ratio(figures[name], echo),
                spread(p50s, "ms"),
                spread(p99s, "ms"),
                ratio(p99s, echo_p99),
                str(refused),
                _cpu_line([run.cpu_ms for run in runs[name] if run.cpu_ms is not None], backend),
                peak_line(peaks),
            ]
        )
    head = (
        f"\n== B1 acks, {backend}: {args.repetitions} turns each, alternating; throughput {args.seconds:.0f} s with "
        f"{args.connections} clients; latency {args.rate_seconds:.0f} s at {args.rate:.0f}/s (open loop) =="
    )
    return head + "\n" + table(rows)


def _cpu_line(per_ack: list[tuple[float, float]], backend: str) -> str:
    """Median CPU per acknowledged delivery during the throughput runs, e.g. `1.52` or `1.75 + 0.44`."""
    if not per_ack:
        return "n/a"
    app = statistics.median(server for server, _ in per_ack)
    return f"{app:.2f} + {statistics.median(db for _, db in per_ack):.2f}" if backend == "postgres" else f"{app:.2f}"


def _max_peaks(all_peaks: Iterator[dict[str, float]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for peaks in all_peaks:
        for name, mb in peaks.items():
            merged[name] = max(merged.get(name, 0.0), mb)
    return merged


@contextmanager
def _world(tmp: Path, count: int, at_rate: int) -> Iterator[World]:
    pem, public = new_key_pair()
    api_key, secret = "sg_bench_" + secrets.token_hex(8), secrets.token_hex(16)
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public) as github,
        StacksonaSimulator(api_key=api_key) as stacksona,
    ):
        stacksona.script("production", "allow")
        env = app_environment(
            private_pem=pem,
            secret=secret,
            api_key=api_key,
            app_id=APP_ID,
            github_url=github.url,
            stacksona_url=stacksona.url,
            database="",
        )
        guids = [str(uuid.uuid4()) for _ in range(count + WARM_UP + at_rate)]
        raw = build_requests(github, secret, guids, first_run=1)
        files = tmp / "requests.pickle", tmp / "warm-up.pickle", tmp / "at-rate.pickle"
        for path, part in zip(files, (raw[:count], raw[count : count + WARM_UP], raw[count + WARM_UP :]), strict=True):
            path.write_bytes(pickle.dumps(part))
        yield World(github, stacksona, env, *files, guids[:count], guids[count + WARM_UP :], tmp)


def build_requests(github: GitHubSimulator, secret: str, guids: Sequence[str], *, first_run: int) -> list[bytes]:
    """One raw signed request per GUID, each for a run of its own that the GitHub simulator has waiting."""
    template = CAPTURED_DELIVERY.read_text()
    requests = []
    for n, guid in enumerate(guids):
        run_id = first_run + n
        github.open_deployment(
            owner=CAPTURED_OWNER,
            repo=CAPTURED_REPO,
            run_id=run_id,
            environment="production",
            installation_id=CAPTURED_INSTALLATION,
            repository_id=CAPTURED_REPOSITORY_ID,
        )
        callback = f"{github.url}/repos/{CAPTURED_OWNER}/{CAPTURED_REPO}/actions/runs/{run_id}/"
        body = template.replace(CAPTURED_CALLBACK, callback).replace(CAPTURED_DEPLOYMENT, str(run_id + 500_000_000))
        requests.append(raw_request(body.replace(CAPTURED_RUN, str(run_id)).encode(), secret, guid))
    return requests


def raw_request(body: bytes, secret: str, guid: str) -> bytes:
    """A delivery as GitHub sends it (its headers, the SHA-256 signature) in HTTP/1.1."""
    head = (
        "POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: GitHub-Hookshot/5f2c1e9\r\n"
        "Content-Type: application/json\r\nX-GitHub-Event: deployment_protection_rule\r\n"
        f"X-GitHub-Delivery: {guid}\r\nX-Hub-Signature-256: {sign(secret, body)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _body_size(world: World) -> int:
    raw: bytes = pickle.loads(world.warm_up.read_bytes())[0]  # noqa: S301 - written by this process
    return len(raw.split(b"\r\n\r\n", 1)[1])


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
