"""The HTTP layer: verify, parse, store, answer. No outbound call happens here."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from app.core.gate import OPEN_STATES
from app.http.metrics import Metrics
from app.http.payload import PayloadError, parse_deployment_request
from app.http.signature import is_valid_signature
from app.settings import Settings
from app.store.gates import GateStore

log = logging.getLogger(__name__)
JsonReply = tuple[Response, int]


def create_app(
    settings: Settings,
    store: GateStore,
    *,
    metrics: Metrics | None = None,
    on_new_work: Callable[[], None] = lambda: None,
) -> Flask:
    app = Flask("app")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_webhook_bytes
    metrics = metrics or Metrics()
    _add_webhooks(app, settings, store, metrics, on_new_work)
    _add_probes(app, store, metrics)

    @app.errorhandler(413)
    def too_large(_error: Exception) -> JsonReply:
        return jsonify({"error": f"body larger than {settings.max_webhook_bytes} bytes"}), 413

    return app


def _add_webhooks(
    app: Flask, settings: Settings, store: GateStore, metrics: Metrics, on_new_work: Callable[[], None]
) -> None:
    def answer(handler: Callable[[Settings, GateStore], tuple[int, dict[str, Any]]], counter: str) -> JsonReply:
        status, body = handler(settings, store)
        metrics.count(counter, body.get("outcome", str(status)))
        if status == 202:
            on_new_work()
        return jsonify(body), status

    @app.post("/webhooks/github")
    def github_webhook() -> JsonReply:
        return answer(handle_github_delivery, "stacksona_gate_webhooks_total")

    @app.post("/webhooks/stacksona")
    def stacksona_callback() -> JsonReply:
        return answer(handle_stacksona_callback, "stacksona_gate_callbacks_total")


def _add_probes(app: Flask, store: GateStore, metrics: Metrics) -> None:
    @app.get("/healthz")
    def healthz() -> JsonReply:
        return jsonify({"status": "ok"}), 200

    @app.get("/readyz")
    def readyz() -> JsonReply:
        try:
            store.ping()
        except SQLAlchemyError as exc:
            log.warning("readiness check failed: %s", type(exc).__name__)
            return jsonify({"status": "database unreachable"}), 503
        return jsonify({"status": "ready"}), 200

    @app.get("/metrics")
    def metrics_page() -> Response:
        try:
            by_state = store.count_by_state()
        except SQLAlchemyError:
            by_state = {}
        return Response(metrics.render(by_state), mimetype="text/plain; version=0.0.4")


def handle_github_delivery(settings: Settings, store: GateStore) -> tuple[int, dict[str, Any]]:
    body = _read_body(settings.max_webhook_bytes)
    if body is None:
        return 413, {"error": f"body larger than {settings.max_webhook_bytes} bytes", "outcome": "too_large"}
    secret = settings.github_webhook_secret.reveal()
    if not is_valid_signature(secret, body, request.headers.get("X-Hub-Signature-256")):
        return 401, {"error": "missing or invalid X-Hub-Signature-256", "outcome": "bad_signature"}
    event = request.headers.get("X-GitHub-Event", "")
    delivery_id = request.headers.get("X-GitHub-Delivery", "").strip()
    if event == "ping":
        return 200, {"outcome": "pong"}
    if event != "deployment_protection_rule":
        return 200, {"outcome": "ignored", "reason": f"event {event or '<none>'!r} is not handled"}
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return 400, {"error": "body is not valid JSON", "outcome": "bad_request"}
    if not isinstance(payload, dict):
        return 400, {"error": "body must be a JSON object", "outcome": "bad_request"}
    action = payload.get("action")
    if action != "requested":
        return 200, {"outcome": "ignored", "reason": f"action {action!r} is not handled"}
    if not delivery_id or len(delivery_id) > 100:
        return 400, {"error": "X-GitHub-Delivery header is missing or too long", "outcome": "bad_request"}
    return _store_delivery(settings, store, delivery_id, payload)


def _read_body(limit: int) -> bytes | None:
    """The raw body, or None when it is larger than `limit`.

    With a Content-Length, Flask's MAX_CONTENT_LENGTH already answered 413. A
    chunked body has none, and Werkzeug would silently cut it at the limit: the
    signature check would then call a merely large delivery forged.
    """
    if request.content_length is not None:
        return request.get_data(cache=False)
    if not request.environ.get("wsgi.input_terminated"):
        return b""
    body: bytes = request.environ["wsgi.input"].read(limit + 1)
    return None if len(body) > limit else body


def _store_delivery(
    settings: Settings, store: GateStore, delivery_id: str, payload: object
) -> tuple[int, dict[str, Any]]:
    try:
        deployment = parse_deployment_request(payload, settings.github_api_url)
    except PayloadError as exc:
        return 400, {"error": str(exc), "outcome": "bad_request"}
    try:
        gate_id, outcome = store.accept(delivery_id, deployment, deadline_seconds=settings.gate_deadline_seconds)
    except SQLAlchemyError as exc:
        log.error("delivery %s not stored: %s", delivery_id, type(exc).__name__)
        return 503, {"error": "cannot store the delivery right now; redeliver it", "outcome": "unavailable"}
    log.info(
        "delivery %s for %s run %s [%s]: gate %s %s",
        delivery_id,
        deployment.full_name,
        deployment.run_id,
        deployment.environment,
        gate_id,
        outcome,
    )
    return 202, {"gate_id": gate_id, "outcome": str(outcome)}


def handle_stacksona_callback(settings: Settings, store: GateStore) -> tuple[int, dict[str, Any]]:
    if settings.stacksona_webhook_token and not _has_callback_token(settings.stacksona_webhook_token.reveal()):
        return 401, {"error": "missing or wrong callback token", "outcome": "bad_token"}
    data = _json_body()
    if not isinstance(data, dict):
        return 400, {"error": "body must be a JSON object", "outcome": "bad_request"}
    thread_id, task_id = _text(data.get("thread_id") or data.get("id")), _text(data.get("task_id"))
    if not thread_id and not task_id:
        return 400, {"error": "thread_id or task_id is required", "outcome": "bad_request"}
    try:
        gate = store.wake(thread_id=thread_id, task_id=task_id)
    except SQLAlchemyError as exc:
        log.error("callback not handled: %s", type(exc).__name__)
        return 503, {"error": "database unavailable", "outcome": "unavailable"}
    if gate is None:
        return 404, {"error": "no gate for this thread", "outcome": "unknown_thread"}
    # The callback is unsigned: it only makes the gate poll Stacksona now;
    # its `decision` field is never trusted.
    if gate.state not in OPEN_STATES:
        return 200, {"gate_id": gate.id, "state": gate.state, "outcome": "already_closed"}
    outcome = "woken" if gate.state == "awaiting_review" else "in_progress"
    return 202, {"gate_id": gate.id, "outcome": outcome}


def _json_body() -> object:
    # Stacksona does not document its callback's Content-Type: parse regardless.
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        return None


def _has_callback_token(expected: str) -> bool:
    given = request.args.get("token", "")
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        given = given or auth.removeprefix("Bearer ").strip()
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def _text(value: object) -> str | None:
    return str(value).strip() or None if isinstance(value, str | int) and not isinstance(value, bool) else None
