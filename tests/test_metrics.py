"""Metrics that add up: exact totals across gunicorn's processes, outbound calls, the worker's own port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from app.clients.github import GitHubClient, RunTarget
from app.clients.stacksona import StacksonaCallFailed, StacksonaClient
from app.core.gate import FINAL_STATES, OPEN_STATES
from app.core.secret import Secret
from app.http.payload import parse_deployment_request
from app.http.routes import create_app
from app.http.signature import sign
from app.settings import GITHUB_DOTCOM_API_VERSION
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from app.store.engine import make_engine, migrate
from app.telemetry.metrics import (
    MULTIPROC_VARIABLE,
    GateGauges,
    Metrics,
    call_outcome,
    default_metrics,
    expecting,
    metrics_directory,
)
from app.worker.health import HealthServer, Heartbeat, health_answer
from tests.support.clock import FakeClock
from tests.support.payloads import API, deployment_payload
from tests.support.processes import Deployment, free_port, spawn_app
from tests.world import API_KEY, APP_ID, OWNER, REPO, WEBHOOK_SECRET, make_settings, running_world, wait_for

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX processes and signals")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


# --- The pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "rate_limited", "expected", "outcome"),
    [
        (200, False, (), "ok"),
        (201, False, (), "ok"),
        (None, False, (), "retry"),
        (500, False, (), "retry"),
        (503, False, (404,), "retry"),
        (429, False, (), "retry"),
        (408, False, (), "retry"),
        (403, True, (), "retry"),
        (403, False, (), "error"),
        (401, False, (), "error"),
        (404, False, (), "error"),
        (404, False, (404,), "ok"),
        (422, False, (404,), "error"),
        (307, False, (), "error"),
    ],
)
def test_call_outcome(status: int | None, rate_limited: bool, expected: tuple[int, ...], outcome: str) -> None:
    with expecting(*expected):
        assert call_outcome(status, rate_limited=rate_limited) == outcome
    assert call_outcome(404, may_expect=False) == "error"


def test_gate_gauges_are_absent_when_the_database_cannot_be_read() -> None:
    assert list(GateGauges(lambda: None).collect()) == []


def test_gate_gauges_are_read_from_the_database_at_scrape_time(engine: Engine, private_pem: str) -> None:
    clock = FakeClock()
    store = Store.open(engine, clock)
    settings = make_settings(API, "https://gate.example", private_pem, "sqlite://")
    client = create_app(settings, store, metrics=Metrics()).test_client()
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "stacksona_gate_oldest_open_gate_seconds") == 0
    assert value(found, "stacksona_gate_gates", state="new") == 0
    for environment in ("staging", "production"):
        payload = deployment_payload(environment=environment, deployment={"id": 7, "environment": environment})
        store.deliveries.accept(f"d-{environment}", parse_deployment_request(payload, API), deadline_seconds=3600)
        clock.advance(100)
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "stacksona_gate_gates", state="new") == 2
    assert value(found, "stacksona_gate_oldest_open_gate_seconds") == 200


def test_refusals_made_before_the_handler_answers_are_counted_too(
    tmp_path: Path, private_pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'gates.db'}")
    migrate(engine)
    settings = make_settings(API, "https://gate.example", private_pem, "sqlite://")
    metrics = Metrics()
    client = create_app(settings, Store.open(engine, time.time), metrics=metrics).test_client()
    big = b"x" * (settings.max_webhook_bytes + 1)
    assert client.post("/webhooks/github", data=big, content_type="application/json").status_code == 413
    monkeypatch.setattr("app.http.routes.is_valid_signature", lambda *_args: 1 / 0)
    assert client.post("/webhooks/github", data=b"{}", content_type="application/json").status_code == 500
    engine.dispose()
    count = metrics.registry.get_sample_value
    assert count("stacksona_gate_webhooks_total", {"outcome": "too_large"}) == 1.0
    assert count("stacksona_gate_webhooks_total", {"outcome": "error"}) == 1.0


@pytest.mark.parametrize(
    ("age", "status", "body"),
    [
        (None, 503, {"status": "starting"}),
        (0.0, 200, {"status": "ok", "loop_seconds_ago": 0.0}),
        (30.0, 200, {"status": "ok", "loop_seconds_ago": 30.0}),
        (30.5, 503, {"status": "stalled", "loop_seconds_ago": 30.5}),
    ],
)
def test_health_answer(age: float | None, status: int, body: dict[str, Any]) -> None:
    assert health_answer(age) == (status, body)


def test_an_operators_directory_is_emptied_and_a_private_one_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"left by an earlier run")
    (given / "README").write_text("not ours")
    monkeypatch.setenv(MULTIPROC_VARIABLE, str(given))
    with metrics_directory() as path:
        assert path == given and sorted(p.name for p in given.iterdir()) == ["README"]
        default_metrics().webhook("created")
        assert list(given.glob("counter_*.db"))  # counted in files, not in memory
    assert os.environ[MULTIPROC_VARIABLE] == str(given) and given.is_dir()

    monkeypatch.delenv(MULTIPROC_VARIABLE)
    with metrics_directory() as private:
        assert os.environ[MULTIPROC_VARIABLE] == str(private)
        with monkeypatch.context() as forked:
            forked.setattr(os, "getpid", lambda: -1)  # a forked process leaving through the same `with`
            with metrics_directory():
                pass
        assert private.is_dir()
    assert not private.exists() and MULTIPROC_VARIABLE not in os.environ
    metrics = default_metrics()  # in memory again
    metrics.decision("allow")
    assert metrics.registry.get_sample_value("stacksona_gate_decisions_total", {"status": "allow"}) == 1.0


# --- Outbound calls through the real clients ------------------------------------------------


def call_counts(metrics: Metrics, service: str) -> dict[str, float]:
    counts = {
        outcome: metrics.registry.get_sample_value(
            "stacksona_gate_calls_total", {"service": service, "outcome": outcome}
        )
        or 0.0
        for outcome in ("ok", "retry", "error")
    }
    timed = metrics.registry.get_sample_value("stacksona_gate_call_seconds_count", {"service": service})
    assert timed == sum(counts.values()), "every call counted is timed too"
    return counts


def test_stacksona_calls_are_counted_by_outcome(stacksona_simulator: StacksonaSimulator) -> None:
    stacksona, metrics = stacksona_simulator, Metrics()
    client = StacksonaClient(stacksona.url, Secret(API_KEY), timeout=httpx.Timeout(0.3), metrics=metrics)
    wrong_key = StacksonaClient(stacksona.url, Secret("sg_wrong"), metrics=metrics)
    try:
        client.add_event("t-1", "deployment.approved", "shipped", {})  # 201: ok
        for failure in (503, 429):
            stacksona.fail_next("poll", failure)
        for _ in range(4):  # 503, 429: retry; then 404 for a thread it does not know: error, twice
            with pytest.raises(StacksonaCallFailed):
                client.get_decision(thread_id="th-unknown", task_id="t-1")
        with pytest.raises(StacksonaCallFailed):
            client.find_task("t-unknown")  # 404 is what a lookup expects: ok
        with pytest.raises(StacksonaCallFailed):
            client.create_request("t-2", {"title": ""})  # 422: error
        with pytest.raises(StacksonaCallFailed):
            wrong_key.add_event("t-1", "x", "y", {})  # 401: error
        stacksona.set_delay("events", 1.0)
        with pytest.raises(StacksonaCallFailed):
            client.add_event("t-1", "x", "y", {})  # no answer in time: retry
    finally:
        stacksona.set_delay("events", 0.0)
        client.close()
        wrong_key.close()
    assert call_counts(metrics, "stacksona") == {"ok": 2.0, "retry": 3.0, "error": 4.0}
    assert call_counts(metrics, "github") == {"ok": 0.0, "retry": 0.0, "error": 0.0}


def test_github_calls_token_mints_included_are_counted_by_outcome(
    github_simulator: GitHubSimulator, private_pem: str
) -> None:
    github, metrics = github_simulator, Metrics()
    github.open_deployment(owner=OWNER, repo=REPO, run_id=7, environment="api")
    client = GitHubClient(
        api_url=github.url,
        app_id=APP_ID,
        private_key=Secret(private_pem),
        api_version=GITHUB_DOTCOM_API_VERSION,
        timeout=httpx.Timeout(0.3),
        metrics=metrics,
    )
    target = RunTarget(OWNER, REPO, 7, "api", 1)
    try:
        # The mint (201) and the missing file (404, expected): ok, ok.
        assert client.get_file(1, OWNER, REPO, ".github/none.yml")[0].status_code == 404
        github.fail_next("contents", 403)  # a refusal the read does not expect: error
        assert client.get_file(1, OWNER, REPO, ".github/none.yml")[0].status_code == 403
        github.fail_next("review", 500)
        github.fail_next("review", 403, headers={"x-ratelimit-remaining": "0"})  # a rate limit: retry
        github.fail_next("review", 422)
        assert [client.status_report(target, "waiting").status_code for _ in range(3)] == [500, 403, 422]
        client.forget_tokens()
        github.fail_next("token", 404)  # the App is not installed: an error even for a read expecting 404
        assert client.get_file(1, OWNER, REPO, ".github/none.yml")[0].token_failure
        github.set_delay("run", 1.0)
        assert client.get_run_status(target).answer.status_code is None  # mint ok, then no answer in time: retry
        github.set_delay("run", 0.0)
        assert client.review(target, "approved", "go").status_code == 204
    finally:
        github.set_delay("run", 0.0)
        client.close()
    assert call_counts(metrics, "github") == {"ok": 4.0, "retry": 3.0, "error": 3.0}


def test_a_gate_counts_its_decision_and_calls_on_the_apps_metrics(
    tmp_path: Path, private_pem: str, public_pem: bytes
) -> None:
    with running_world(tmp_path, private_pem, public_pem) as world:
        world.stacksona.script("api", "allow")
        before = scrape(world.app_url + "/metrics")
        world.stacksona.fail_next("create", 503)
        gate_id = world.deploy("api")
        world.settle()
        world.later(600)
        assert world.gate(gate_id).state == "approved"
        after = scrape(world.app_url + "/metrics")

    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)

    assert delta("stacksona_gate_decisions_total", status="allow") == 1.0
    assert delta("stacksona_gate_calls_total", service="stacksona", outcome="retry") == 1.0
    assert delta("stacksona_gate_calls_total", service="stacksona", outcome="error") == 0.0
    assert delta("stacksona_gate_calls_total", service="stacksona", outcome="ok") >= 2.0  # the create, the event
    assert delta("stacksona_gate_calls_total", service="github", outcome="error") == 0.0
    assert delta("stacksona_gate_calls_total", service="github", outcome="ok") >= 2.0  # the mint, the review
    assert delta("stacksona_gate_webhooks_total", outcome="created") == 1.0
    for service in ("github", "stacksona"):
        calls = sum(delta("stacksona_gate_calls_total", service=service, outcome=o) for o in ("ok", "retry", "error"))
        assert delta("stacksona_gate_call_seconds_count", service=service) == calls
    assert value(after, "stacksona_gate_gates", state="approved") == 1.0


# --- `web` with several processes -----------------------------------------------------------


class Web:
    def __init__(self, d: Deployment, process: subprocess.Popen[bytes], base_url: str, tmpdir: Path) -> None:
        self.d, self.process, self.base_url, self.tmpdir = d, process, base_url, tmpdir

    def log(self) -> str:
        return (self.d.tmp_path / "web.log").read_text()

    def metrics_directories(self) -> list[Path]:
        return [p for p in self.tmpdir.iterdir() if p.name.startswith("stacksona-gate-metrics-")]


@pytest.fixture
def web(
    tmp_path: Path, private_pem: str, github_simulator: GitHubSimulator, stacksona_simulator: StacksonaSimulator
) -> Iterator[Web]:
    d = Deployment(tmp_path, private_pem, github_simulator, stacksona_simulator)
    port, tmpdir = free_port(), tmp_path / "tmp"
    tmpdir.mkdir()
    env = d.env | {"PORT": str(port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "3", "TMPDIR": str(tmpdir)}
    process = spawn_app("web", env, tmp_path, tmp_path / "web.log")
    served = Web(d, process, f"http://127.0.0.1:{port}", tmpdir)
    try:
        wait_for(lambda: _answers(served.base_url + "/healthz"))
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _answers(url: str) -> bool | None:
    try:
        return httpx.get(url, timeout=1).status_code == 200 or None
    except httpx.HTTPError:
        return None


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    with httpx.Client(timeout=10) as client:  # a connection of its own: any process may take it
        return client.post(url, content=body, headers=headers).status_code


@POSIX
def test_web_with_three_processes_gives_the_exact_totals_at_every_scrape(web: Web) -> None:
    d, forged = web.d, 3
    started = time.time()
    url = web.base_url + "/webhooks/github"
    deliveries = _deliver_until_two_processes_store(web, url)
    forged_body = b'{"action": "requested"}'
    forged_headers = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-Hub-Signature-256": sign("nope", forged_body),
    }
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: _post(url, forged_body, forged_headers), range(forged)))
    assert codes == [401] * forged

    engine = make_engine(d.db)
    try:
        task_ids = [gate.task_id for gate in Store.open(engine, time.time).gates.list_gates()][:4]
    finally:
        engine.dispose()
    callbacks = [{"task_id": task_id} for task_id in task_ids] + [{"thread_id": f"th-{n}"} for n in range(3)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda body: httpx.post(web.base_url + "/webhooks/stacksona", json=body).status_code, callbacks)
        )
    assert answers == [202] * 4 + [404] * 3

    for _ in range(20):
        found = scrape(web.base_url + "/metrics")
        assert value(found, "stacksona_gate_webhooks_total", outcome="created") == deliveries
        assert value(found, "stacksona_gate_webhooks_total", outcome="bad_signature") == forged
        assert value(found, "stacksona_gate_callbacks_total", outcome="in_progress") == 4
        assert value(found, "stacksona_gate_callbacks_total", outcome="unknown_thread") == 3
        assert value(found, "stacksona_gate_gates", state="new") == deliveries  # read once, not once per process
        for state in (*OPEN_STATES, *FINAL_STATES):
            if state != "new":
                assert value(found, "stacksona_gate_gates", state=state) == 0
        oldest = value(found, "stacksona_gate_oldest_open_gate_seconds")
        assert oldest is not None and 0 < oldest <= time.time() - started + 1

    per_process = _created_per_process(web)
    assert len(per_process) >= 3 and sum(per_process) == deliveries

    text = httpx.get(web.base_url + "/metrics").text
    for secret in (WEBHOOK_SECRET, API_KEY, "PRIVATE KEY", *task_ids):
        assert secret not in text

    web.process.send_signal(signal.SIGTERM)
    assert web.process.wait(timeout=30) == 0, web.log()
    assert web.metrics_directories() == [], "the private directory is removed at exit"


def _deliver_until_two_processes_store(web: Web, url: str, *, rounds: int = 10, per_round: int = 6) -> int:
    """Sends rounds of concurrent deliveries until two processes have each stored one; returns how many were sent.

    gunicorn's processes race to accept each connection, and one of them often wins a whole burst: a fixed
    burst would sometimes test one process only.
    """
    sent = 0
    for _ in range(rounds):
        payloads = [
            web.d.github.open_deployment(owner=OWNER, repo=REPO, run_id=100 + sent + n, environment="api")
            for n in range(per_round)
        ]
        with ThreadPoolExecutor(per_round) as pool:
            codes = list(pool.map(lambda p: web.d.github.deliver(url, p, secret=WEBHOOK_SECRET).status_code, payloads))
        assert codes == [202] * per_round
        sent += per_round
        if sum(1 for n in _created_per_process(web) if n) >= 2:
            return sent
    pytest.fail(f"one process took all {sent} deliveries: {_created_per_process(web)}")


def _created_per_process(web: Web) -> list[float]:
    [directory] = web.metrics_directories()
    return [_created_in(path) for path in directory.glob("counter_*.db")]


def _created_in(path: Path) -> float:
    """One process's count of stored deliveries, from its own file."""
    for metric in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
        for sample in metric.samples:
            if sample.name == "stacksona_gate_webhooks_total" and sample.labels == {"outcome": "created"}:
                return float(sample.value)
    return 0.0


# --- The worker's port ----------------------------------------------------------------------


def test_the_worker_loop_keeps_healthz_at_200_and_a_stalled_loop_turns_it_503(
    tmp_path: Path, private_pem: str, public_pem: bytes
) -> None:
    with running_world(tmp_path, private_pem, public_pem) as world:
        clock = FakeClock()
        world.worker.heartbeat = Heartbeat(clock=clock)
        server = HealthServer("127.0.0.1", 0, world.worker.heartbeat, Metrics())
        stop = threading.Event()
        loop = threading.Thread(target=world.worker.run, args=(stop,))
        base = f"http://127.0.0.1:{server.port}"
        try:
            assert httpx.get(base + "/healthz").json() == {"status": "starting"}
            loop.start()
            wait_for(lambda: httpx.get(base + "/healthz").status_code == 200 or None)
            clock.advance(31)  # the loop goes on turning: it beats again at once
            wait_for(lambda: httpx.get(base + "/healthz").status_code == 200 or None)
            stop.set()
            loop.join(timeout=30)
            clock.advance(31)  # stalled: no turn for longer than 30 s
            answer = httpx.get(base + "/healthz")
            assert answer.status_code == 503 and answer.json()["status"] == "stalled"
            assert httpx.get(base + "/nothing").status_code == 404
        finally:
            stop.set()
            server.close()


@POSIX
def test_a_worker_process_serves_healthz_and_its_metrics_on_worker_health_port(
    tmp_path: Path, private_pem: str, github_simulator: GitHubSimulator, stacksona_simulator: StacksonaSimulator
) -> None:
    d = Deployment(tmp_path, private_pem, github_simulator, stacksona_simulator)
    d.stacksona.script("api", "allow")
    engine = make_engine(d.db)
    migrate(engine)
    port = free_port()
    worker = spawn_app(
        "worker", d.env | {"WORKER_HEALTH_PORT": str(port), "HOST": "127.0.0.1"}, tmp_path, tmp_path / "worker.log"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with LoopbackServer(create_app(d.settings, Store.open(engine, time.time), metrics=Metrics())) as web:
            wait_for(lambda: _answers(base + "/healthz"))
            assert httpx.get(base + "/healthz").json()["status"] == "ok"
            payload = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=9, environment="api")
            assert (
                d.github.deliver(web.base_url + "/webhooks/github", payload, secret=WEBHOOK_SECRET).status_code == 202
            )
            wait_for(lambda: d.github.final_reviews(run_id=9) or None)
            wait_for(lambda: d.stacksona.events or None)  # the step's last call, after the review
            found = scrape(base + "/metrics")
        assert value(found, "stacksona_gate_decisions_total", status="allow") == 1
        assert (value(found, "stacksona_gate_calls_total", service="stacksona", outcome="ok") or 0) >= 2
        assert (value(found, "stacksona_gate_calls_total", service="github", outcome="ok") or 0) >= 2
        # (GitHub's may count the start-up check's refusal: this App has no webhook URL set.)
        assert value(found, "stacksona_gate_calls_total", service="stacksona", outcome="error") == 0
        assert value(found, "stacksona_gate_webhooks_total", outcome="created") is None  # the web's, not the worker's
        text = httpx.get(base + "/metrics").text
        assert WEBHOOK_SECRET not in text and API_KEY not in text
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        engine.dispose()
    assert code == 0, d.log()


@POSIX
def test_serve_shows_the_in_process_workers_metrics(
    tmp_path: Path, private_pem: str, github_simulator: GitHubSimulator, stacksona_simulator: StacksonaSimulator
) -> None:
    d = Deployment(tmp_path, private_pem, github_simulator, stacksona_simulator)
    d.stacksona.script("api", "allow")
    port = free_port()
    process = spawn_app("serve", d.env | {"PORT": str(port), "HOST": "127.0.0.1"}, tmp_path, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base + "/healthz"))
        payload = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=11, environment="api")
        assert d.github.deliver(base + "/webhooks/github", payload, secret=WEBHOOK_SECRET).status_code == 202
        wait_for(lambda: d.github.final_reviews(run_id=11) or None)
        found = wait_for(lambda: _with_decision(scrape(base + "/metrics")))
        assert value(found, "stacksona_gate_webhooks_total", outcome="created") == 1
        assert (value(found, "stacksona_gate_calls_total", service="github", outcome="ok") or 0) >= 2
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0, (tmp_path / "serve.log").read_text()


def _with_decision(found: Samples) -> Samples | None:
    return found if value(found, "stacksona_gate_decisions_total", status="allow") == 1 else None
