"""The HTTP layer: every answer of /webhooks/github, /webhooks/stacksona and the probes."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import EnvironBuilder

from app.core.secret import Secret
from app.http.payload import parse_deployment_request
from app.http.routes import CALLBACK_THREADS, create_app
from app.http.signature import sign
from app.store import Store
from app.store.engine import make_engine
from app.telemetry.logs import JsonFormatter, TextFormatter
from app.telemetry.metrics import Metrics
from tests.support.payloads import API, deployment_payload
from tests.support.web import client_for, sqlite_store
from tests.world import WEBHOOK_SECRET, make_settings


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with sqlite_store(tmp_path / "web.db") as store:
        yield store


@pytest.fixture
def client(store: Store, private_pem: str) -> FlaskClient:
    return client_for(store, private_pem)


def post_github(
    client: FlaskClient,
    body: bytes | dict[str, Any],
    *,
    event: str = "deployment_protection_rule",
    delivery: str | None = "d-1",
    signature: str | None = None,
) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"X-GitHub-Event": event, "X-Hub-Signature-256": signature or sign(WEBHOOK_SECRET, raw)}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return client.post("/webhooks/github", data=raw, headers=headers, content_type="application/json")


def test_valid_delivery_is_stored_then_202(client: FlaskClient, store: Store) -> None:
    response = post_github(client, deployment_payload())
    assert response.status_code == 202
    assert response.json == {"gate_id": 1, "outcome": "created"}
    gate = store.gates.get(1)
    assert gate is not None and gate.state == "new" and gate.run_id == 42
    assert store.deliveries.delivery_ids(1) == ["d-1"]


def test_same_delivery_twice_is_deduplicated(client: FlaskClient, store: Store) -> None:
    post_github(client, deployment_payload())
    again = post_github(client, deployment_payload())
    assert again.status_code == 202 and again.json == {"gate_id": 1, "outcome": "duplicate"}
    assert len(store.gates.list_gates()) == 1


@pytest.mark.parametrize(
    "signature",
    ["", "sha256=" + "0" * 64, "sha1=abc", sign("wrong secret", b"{}")],
    ids=["empty", "zeros", "sha1", "wrong-secret"],
)
def test_bad_signature_is_401_and_stores_nothing(client: FlaskClient, store: Store, signature: str) -> None:
    response = post_github(client, deployment_payload(), signature=signature or "x")
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json["error"]
    assert store.gates.list_gates() == []


def test_missing_signature_header_is_401(client: FlaskClient) -> None:
    body = json.dumps(deployment_payload()).encode()
    response = client.post("/webhooks/github", data=body, headers={"X-GitHub-Event": "deployment_protection_rule"})
    assert response.status_code == 401


def test_ping_is_200(client: FlaskClient) -> None:
    assert post_github(client, {"zen": "Keep it simple."}, event="ping").status_code == 200


@pytest.mark.parametrize(
    ("event", "body"),
    [("push", {"ref": "x"}), ("deployment_protection_rule", deployment_payload(action="completed"))],
    ids=["other-event", "other-action"],
)
def test_ignored_events_are_200(client: FlaskClient, store: Store, event: str, body: dict[str, Any]) -> None:
    response = post_github(client, body, event=event)
    assert response.status_code == 200 and response.json["outcome"] == "ignored"
    assert store.gates.list_gates() == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "JSON object"),
        (
            deployment_payload(
                deployment_callback_url="https://evil.example/repos/acme/shop/actions/runs/1/deployment_protection_rule"
            ),
            "deployment_callback_url",
        ),
        (
            deployment_payload(
                deployment_callback_url=f"{API}/repos/acme/other/actions/runs/1/deployment_protection_rule"
            ),
            "another repository",
        ),
        (deployment_payload(environment=None), "environment"),
        (deployment_payload(installation=None), "installation"),
        (b"[" * 30_000 + b"]" * 30_000, "JSON"),
        (deployment_payload(installation={"id": 2**63}), "installation.id"),
        (
            deployment_payload(
                deployment_callback_url=f"{API}/repos/acme/shop/actions/runs/{2**63}/deployment_protection_rule"
            ),
            "run id",
        ),
        (deployment_payload(environment="prod\x00uction"), "NUL"),
        (deployment_payload(environment="e" * 256), "longer"),
    ],
    ids=[
        "not-json",
        "not-object",
        "foreign-host",
        "repo-mismatch",
        "no-environment",
        "no-installation",
        "deeply-nested",
        "id-beyond-bigint",
        "run-id-beyond-bigint",
        "nul-character",
        "environment-too-long",
    ],
)
def test_malformed_deliveries_are_400_with_a_reason(
    client: FlaskClient, store: Store, body: bytes | dict[str, Any], words: str
) -> None:
    response = post_github(client, body)
    assert response.status_code == 400
    assert words in response.json["error"]
    assert store.gates.list_gates() == []


def test_missing_delivery_id_is_400(client: FlaskClient) -> None:
    response = post_github(client, deployment_payload(), delivery=None)
    assert response.status_code == 400 and "X-GitHub-Delivery" in response.json["error"]


def test_too_large_is_413(client: FlaskClient, store: Store) -> None:
    body = deployment_payload(padding="x" * 70 * 1024)
    response = post_github(client, body)
    assert response.status_code == 413
    assert store.gates.list_gates() == []


@pytest.mark.parametrize(("size", "status"), [(1024, 202), (70 * 1024, 413)])
def test_chunked_body_without_length_is_measured_not_cut(
    client: FlaskClient, store: Store, size: int, status: int
) -> None:
    raw = json.dumps(deployment_payload(padding="x" * size)).encode()
    headers = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": "d-chunked",
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
        "Content-Type": "application/json",
    }
    environ = EnvironBuilder("/webhooks/github", method="POST", data=raw, headers=headers).get_environ()
    # What gunicorn hands over for Transfer-Encoding: chunked: no CONTENT_LENGTH, a terminated input.
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    response = client.open(environ)
    assert response.status_code == status, response.json
    assert len(store.gates.list_gates()) == (1 if status == 202 else 0)


def test_database_down_is_503_never_2xx(tmp_path: Path, private_pem: str) -> None:
    broken = Store.open(make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"), time.time)
    client = client_for(broken, private_pem)
    response = post_github(client, deployment_payload())
    assert response.status_code == 503 and "redeliver" in response.json["error"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_stacksona_callback_unknown_thread_is_404(client: FlaskClient) -> None:
    response = client.post("/webhooks/stacksona", json={"thread_id": "thr_nope", "decision": "approved"})
    assert response.status_code == 404


def test_stacksona_callback_without_json_content_type_is_read(client: FlaskClient, store: Store) -> None:
    gate_id, _ = store.deliveries.accept(
        "d-1", parse_deployment_request(deployment_payload(), API), deadline_seconds=60
    )
    body = json.dumps({"task_id": store.gates.get(gate_id).task_id}).encode()  # type: ignore[union-attr]
    response = client.post("/webhooks/stacksona", data=body, content_type="text/plain")
    assert response.status_code == 202, response.json


def test_stacksona_callback_deeply_nested_is_400(client: FlaskClient) -> None:
    response = client.post("/webhooks/stacksona", data=b"[" * 30_000 + b"]" * 30_000, content_type="text/plain")
    assert response.status_code == 400


def test_stacksona_callback_needs_an_id(client: FlaskClient) -> None:
    assert client.post("/webhooks/stacksona", json={"decision": "approved"}).status_code == 400
    assert client.post("/webhooks/stacksona", data=b"nope").status_code == 400


def test_stacksona_callback_token(store: Store, private_pem: str) -> None:
    client = client_for(store, private_pem, stacksona_webhook_token=Secret("cb-token"))
    post_github(client, deployment_payload())
    task_id = store.gates.get(1).task_id  # type: ignore[union-attr]
    body = {"task_id": task_id, "decision": "approved"}
    assert client.post("/webhooks/stacksona", json=body).status_code == 401
    assert client.post("/webhooks/stacksona?token=wrong", json=body).status_code == 401
    assert client.post("/webhooks/stacksona?token=cb-token", json=body).status_code == 202
    bearer = {"Authorization": "Bearer cb-token"}
    assert client.post("/webhooks/stacksona", json=body, headers=bearer).status_code == 202


def test_probes_and_metrics(store: Store, private_pem: str) -> None:
    settings = make_settings(API, "https://gate.example", private_pem, "sqlite://")
    client = create_app(settings, store, metrics=Metrics()).test_client()  # counts of this app only
    post_github(client, deployment_payload())
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'stacksona_gate_gates{state="new"} 1.0\n' in metrics
    assert 'stacksona_gate_webhooks_total{outcome="created"} 1.0\n' in metrics


def test_errors_never_echo_secrets(store: Store, private_pem: str, caplog: pytest.LogCaptureFixture) -> None:
    client = client_for(store, private_pem, stacksona_webhook_token=Secret("cb-token"))
    responses = [
        post_github(client, deployment_payload(), signature="sha256=00"),
        client.post("/webhooks/stacksona?token=nope", json={"thread_id": "x"}),
        client.post("/webhooks/stacksona?token=cb-token", json={"thread_id": "x"}),
    ]
    for response in responses:
        text = response.get_data(as_text=True)
        assert WEBHOOK_SECRET not in text and "cb-token" not in text
    # Nor do the log lines, in either LOG_FORMAT.
    assert caplog.records
    for formatter in (JsonFormatter(), TextFormatter()):
        lines = "\n".join(formatter.format(record) for record in caplog.records)
        assert WEBHOOK_SECRET not in lines and "cb-token" not in lines and "nope" not in lines


@pytest.mark.parametrize(
    ("body", "signature", "status"),
    [
        (deployment_payload(), "sha256=00", 401),
        (b"not json", None, 400),
        (deployment_payload(padding="x" * 70 * 1024), None, 413),
    ],
    ids=["bad-signature", "malformed", "too-large"],
)
def test_a_refused_delivery_is_one_warning_with_its_id_and_reason(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, body: Any, signature: str | None, status: int
) -> None:
    assert post_github(client, body, delivery="d-refused", signature=signature).status_code == status
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.levelno == logging.WARNING and getattr(line, "delivery_id", None) == "d-refused"
    assert line.getMessage().startswith(f"delivery d-refused refused with {status}: ")
    assert json.loads(JsonFormatter().format(line))["delivery_id"] == "d-refused"


def test_settings_with_other_deadline_are_used(store: Store, private_pem: str) -> None:
    client = client_for(store, private_pem, gate_deadline_seconds=3600.0)
    post_github(client, deployment_payload())
    gate = store.gates.get(1)
    assert gate is not None and gate.deadline_at - gate.created_at == pytest.approx(3600.0)


@pytest.mark.parametrize(
    "body",
    [
        {"thread_id": "\ud800"},
        {"task_id": "gh-1-\udfff"},
        {"id": "thr\x00"},
        {"thread_id": "thr\nINFO forged"},
        {"thread_id": "t" * 201},
        {"task_id": "t" * 121},
    ],
    ids=["surrogate-thread", "surrogate-task", "nul-id", "newline", "thread-too-long", "task-too-long"],
)
def test_stacksona_callback_with_unsafe_text_is_400(
    client: FlaskClient, body: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The callback needs no secret: this text must never reach the database (it raised UnicodeEncodeError).
    raw = json.dumps(body).encode()  # "\ud800" goes out as its JSON escape, as an attacker would send it
    response = client.post("/webhooks/stacksona", data=raw, content_type="application/json")
    assert response.status_code == 400 and "printable text" in response.json["error"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    ("query", "headers"),
    [("token=cb-token%00", {}), ("", {"Authorization": "Bearer cb-token\x85"}), ("token=" + "x" * 5000, {})],
    ids=["nul", "c1-control", "huge"],
)
def test_stacksona_callback_with_unsafe_token_is_401(
    store: Store, private_pem: str, query: str, headers: dict[str, str]
) -> None:
    client = client_for(store, private_pem, stacksona_webhook_token=Secret("cb-token"))
    response = client.post("/webhooks/stacksona", query_string=query, json={"thread_id": "x"}, headers=headers)
    assert response.status_code == 401 and response.is_json


@pytest.mark.parametrize(
    "delivery", ["d-\ud800", "d-\x00", "d-\x1b[31m", "d" * 101], ids=["surrogate", "nul", "escape", "too-long"]
)
def test_unsafe_delivery_id_is_400(client: FlaskClient, store: Store, delivery: str) -> None:
    response = post_github(client, deployment_payload(), delivery=delivery)
    assert response.status_code == 400 and "X-GitHub-Delivery" in response.json["error"]
    assert store.gates.list_gates() == []


def test_werkzeug_errors_answer_json(client: FlaskClient) -> None:
    missing = client.get("/nope")
    assert (missing.status_code, missing.json) == (404, {"error": "Not Found"})
    wrong_method = client.get("/webhooks/github")
    assert (wrong_method.status_code, wrong_method.json) == (405, {"error": "Method Not Allowed"})
    assert "POST" in wrong_method.headers["Allow"]
    too_large = client.post("/webhooks/stacksona", data=b"x" * (70 * 1024))
    assert too_large.status_code == 413 and "larger than" in too_large.json["error"]


def test_an_internal_fault_is_500_json_and_one_log_line(
    client: FlaskClient, store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug, with\na second line")

    monkeypatch.setattr(store.deliveries, "accept", broken)
    response = post_github(client, deployment_payload())
    assert (response.status_code, response.json) == (500, {"error": "internal error"})
    [line] = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert line.levelno == logging.ERROR and line.exc_info is None
    assert "RuntimeError" in line.getMessage() and "\n" not in line.getMessage()


def test_while_the_database_is_stuck_requests_beyond_the_slots_answer_503(
    store: Store, private_pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(API, "https://gate.example", private_pem, "sqlite://")
    client = create_app(settings, store, database_slots=1, database_queue=0).test_client()
    entered, release = threading.Event(), threading.Event()
    accept = store.deliveries.accept

    def waiting_accept(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(timeout=30)  # a database lock held elsewhere
        return accept(*args, **kwargs)

    monkeypatch.setattr(store.deliveries, "accept", waiting_accept)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post_github, client, deployment_payload(), delivery="d-first")
        assert entered.wait(timeout=30)
        busy = post_github(client, deployment_payload(), delivery="d-second")
        callback = client.post("/webhooks/stacksona", json={"thread_id": "thr_1"})  # a lane of its own
        readiness, health = client.get("/readyz"), client.get("/healthz")
        release.set()
        assert first.result(timeout=30).status_code == 202
    assert (busy.status_code, busy.json["outcome"]) == (503, "busy")
    assert (callback.status_code, callback.json["outcome"]) == (404, "unknown_thread")
    assert (readiness.status_code, health.status_code) == (503, 200)
    assert store.deliveries.delivery_ids(1) == ["d-first"]


def test_callbacks_beyond_their_own_slots_answer_503_and_leave_the_deliveries_theirs(
    store: Store, private_pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(API, "https://gate.example", private_pem, "sqlite://")
    client = create_app(settings, store).test_client()
    entered, release = threading.Event(), threading.Event()
    wake = store.gates.wake

    def waiting_wake(**kwargs: Any) -> Any:
        entered.set()
        release.wait(timeout=30)  # a database lock held elsewhere
        return wake(**kwargs)

    def callback(thread_id: str) -> Any:
        return client.post("/webhooks/stacksona", json={"thread_id": thread_id})

    monkeypatch.setattr(store.gates, "wake", waiting_wake)
    with ThreadPoolExecutor(CALLBACK_THREADS + 1) as pool:
        first = pool.submit(callback, "thr_first")
        assert entered.wait(timeout=30)
        # The lane holds one callback and queues CALLBACK_QUEUE more: of these, one is refused at once.
        more = [pool.submit(callback, f"thr_{n}") for n in range(CALLBACK_THREADS)]
        done, _ = wait(more, timeout=30, return_when=FIRST_COMPLETED)
        delivery = post_github(client, deployment_payload(), delivery="d-during")
        release.set()
        answers = sorted(future.result(timeout=30).status_code for future in [first, *more])
    assert [future.result().json["outcome"] for future in done] == ["busy"]
    assert answers == [404] * CALLBACK_THREADS + [503]
    assert delivery.status_code == 202


def test_a_burst_beyond_the_slots_is_stored_while_the_database_answers(
    store: Store, private_pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GitHub sends one delivery per job of a run, all at once: a slow but answering database stores them all.
    settings = make_settings(API, "https://gate.example", private_pem, "sqlite://")
    client = create_app(settings, store, database_slots=2).test_client()
    accept = store.deliveries.accept

    def slow_accept(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return accept(*args, **kwargs)

    monkeypatch.setattr(store.deliveries, "accept", slow_accept)
    deliveries = [f"d-{n}" for n in range(8)]
    barrier = threading.Barrier(len(deliveries))

    def send(delivery_id: str) -> int:
        barrier.wait(timeout=30)
        return int(post_github(client, deployment_payload(), delivery=delivery_id).status_code)

    with ThreadPoolExecutor(len(deliveries)) as pool:
        assert list(pool.map(send, deliveries)) == [202] * len(deliveries)
    assert sorted(store.deliveries.delivery_ids(1)) == deliveries


@pytest.mark.parametrize(("lock_timeout", "busy_ms"), [(None, 30_000), (5.0, 5_000), (0.25, 250)])
def test_sqlite_busy_timeout_follows_the_lock_timeout(tmp_path: Path, lock_timeout: float | None, busy_ms: int) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'busy.db'}", lock_timeout_seconds=lock_timeout)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == busy_ms
    engine.dispose()
