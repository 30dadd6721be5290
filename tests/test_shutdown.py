"""SIGTERM as Kubernetes sends it: `worker`, `serve` and `web` stop taking work, finish or hand back, exit in 20 s."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import httpx
import pytest
from sqlalchemy import Engine

from app.core.gate import FINAL_STATES, Change, Gate, GateState
from app.http.payload import parse_deployment_request
from app.http.routes import create_app
from app.http.signature import sign
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from app.store.engine import make_engine, migrate
from tests.support.clock import FakeClock
from tests.support.payloads import API, deployment_payload
from tests.support.processes import Deployment, free_port, spawn_app
from tests.world import API_KEY, APP_ID, OWNER, REPO, WEBHOOK_SECRET, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")

# Kubernetes' default grace is 30 s; the App promises 20.
EXIT_WITHIN_SECONDS = 20
# Long enough that only a released lease, never an expired one, lets another worker in during a test.
LONG_LEASE = {"WORKER_LEASE": "120s"}


class Running(NamedTuple):
    d: Deployment
    store: Store  # the database the App's processes share, read by the test


@pytest.fixture
def running(tmp_path: Path, private_pem: str, public_pem: bytes) -> Iterator[Running]:
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY) as stacksona,
    ):
        d = Deployment(tmp_path, private_pem, github, stacksona)
        d.env |= LONG_LEASE | {"LOG_FORMAT": "json"}
        engine = make_engine(d.db)
        migrate(engine)
        try:
            yield Running(d, Store.open(engine, time.time))
        finally:
            github.release("review")  # a failed test must not leave a server thread waiting
            engine.dispose()


def sigterm(process: subprocess.Popen[bytes], log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=EXIT_WITHIN_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running {EXIT_WITHIN_SECONDS}s after SIGTERM:\n{log.read_text()}") from None
    assert code == 0, log.read_text()


def log_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def review_in_flight(r: Running, deliver: str, run_id: int) -> Gate:
    """A deployment Stacksona allows at once, whose approval now hangs at GitHub: the gate is mid-call."""
    r.d.stacksona.script("api", "allow")
    r.d.github.hold("review")
    payload = r.d.github.open_deployment(owner=OWNER, repo=REPO, run_id=run_id, environment="api")
    assert r.d.github.deliver(deliver, payload, secret=WEBHOOK_SECRET).status_code == 202
    wait_for(lambda: r.d.github.held("review") or None)
    [gate] = r.store.gates.list_gates()
    assert gate.state == "reporting" and gate.lease_owner is not None
    return gate


def assert_handed_back(r: Running, log: Path, held: Gate) -> None:
    """The stopped process left the gate due and unleased, its mark kept; the log says so, with the gate's id."""
    gate = r.store.gates.get(held.id)
    assert gate is not None
    assert (gate.state, gate.lease_owner) == ("reporting", None), gate
    assert gate.review_sent_at is not None and gate.next_attempt_at <= time.time()
    released = [line for line in log_lines(log) if "lease released" in str(line["message"])]
    assert [line.get("gate_id") for line in released] == [held.id], log.read_text()


def test_a_released_lease_lets_another_worker_claim_now_and_the_late_result_is_discarded(engine: Engine) -> None:
    store = Store.open(engine, FakeClock())
    gate_id, _ = store.deliveries.accept(
        "d-1", parse_deployment_request(deployment_payload(), API), deadline_seconds=3600
    )
    [held] = store.gates.claim_due("stopping", limit=1, lease_seconds=120)
    assert store.gates.claim_due("other", limit=1, lease_seconds=120) == []
    store.gates.release([held])
    [taken] = store.gates.claim_due("other", limit=1, lease_seconds=120)
    assert (taken.id, taken.lease_owner) == (gate_id, "other")
    store.gates.release([held])  # a second release by the stopped worker leaves the new lease alone
    assert store.gates.mark(held, {"review_sent_at": 1.0}, lease_seconds=120) is False
    assert store.gates.apply(held, Change(GateState.APPROVED, "late")) is None
    assert store.gates.apply(taken, Change(GateState.APPROVED, "by the new owner")) is not None


def test_worker_hands_back_a_gate_whose_call_hangs_and_another_worker_finishes_it(running: Running) -> None:
    r = running
    with LoopbackServer(create_app(r.d.settings, r.store)) as web:
        held = None
        worker = r.d.start_worker()
        try:
            held = review_in_flight(r, web.base_url + "/webhooks/github", run_id=801)
        finally:
            sigterm(worker, r.d.tmp_path / "worker.log")
        assert held is not None
        assert_handed_back(r, r.d.tmp_path / "worker.log", held)

        r.d.github.release("review")  # GitHub takes the approval the stopped worker never heard back about
        wait_for(lambda: r.d.github.final_reviews(run_id=801) or None)
        successor = r.d.start_worker()
        try:
            # Well within the 120 s lease: only the release lets it claim the gate now.
            gate = wait_for(lambda: _closed(r.store, held.id))
        finally:
            sigterm(successor, r.d.tmp_path / "worker.log")
    assert gate.state == "approved"
    assert [review.status for review in r.d.github.reviews] == [204, 422]


def test_serve_hands_back_the_in_process_workers_gate(running: Running) -> None:
    r = running
    port = free_port()
    log = r.d.tmp_path / "serve.log"
    serve = spawn_app("serve", r.d.env | {"PORT": str(port), "HOST": "127.0.0.1"}, r.d.tmp_path, log)
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"))
        held = review_in_flight(r, f"http://127.0.0.1:{port}/webhooks/github", run_id=802)
    finally:
        sigterm(serve, log)
    assert_handed_back(r, log, held)
    assert any(str(line["message"]).endswith(" stopped") for line in log_lines(log))


def test_web_answers_the_request_it_holds_then_exits(running: Running) -> None:
    r = running
    port = free_port()
    log = r.d.tmp_path / "web.log"
    env = r.d.env | {"PORT": str(port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "1"}
    web = spawn_app("web", env, r.d.tmp_path, log)
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"))
        payload = r.d.github.open_deployment(owner=OWNER, repo=REPO, run_id=803, environment="api")
        body = json.dumps(payload).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn, conn.makefile("rb") as answers:
            # One answer first: the process surely holds this connection (not the listener's backlog).
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert _answer(answers) == b"HTTP/1.1 200 OK"
            conn.sendall(_request_head(body) + body[:100])  # the delivery is in flight: part of its body sent
            web.send_signal(signal.SIGTERM)
            wait_for(lambda: "stopping: no new work" in log.read_text() or None)  # the process got the signal
            conn.sendall(body[100:])
            assert _answer(answers) == b"HTTP/1.1 202 ACCEPTED"
        code = web.wait(timeout=EXIT_WITHIN_SECONDS)
    finally:
        if web.poll() is None:
            web.kill()
    assert code == 0, log.read_text()
    assert [g.run_id for g in r.store.gates.list_gates()] == [803]


def _closed(store: Store, gate_id: int) -> Gate | None:
    gate = store.gates.get(gate_id)
    return gate if gate is not None and gate.state in FINAL_STATES else None


def _answer(answers: BinaryIO) -> bytes:
    """The status line of the next answer on the connection, its headers and body read past."""
    status = answers.readline().strip()
    headers = dict(line.decode().split(":", 1) for line in iter(answers.readline, b"\r\n"))
    answers.read(int({k.lower(): v for k, v in headers.items()}.get("content-length", "0")))
    return status


def _request_head(body: bytes) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": "d-in-flight",
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body),
    }
    lines = ["POST /webhooks/github HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _healthy(base_url: str) -> bool | None:
    try:
        return httpx.get(base_url + "/healthz", timeout=1).status_code == 200 or None
    except httpx.HTTPError:
        return None
