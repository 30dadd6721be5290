"""The HTTP layer: verify, parse, store, answer. No outbound call happens here."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app.http.callbacks import handle_stacksona_callback
from app.http.guards import BUSY, MAX_HEADER, Answer, DatabaseSlots, RejectedInput, clean_text
from app.http.payload import PayloadError, parse_deployment_request
from app.http.signature import is_valid_signature
from app.settings import Settings
from app.store import Store
from app.store.deliveries import StoreBusy
from app.store.engine import error_reason
from app.telemetry.metrics import CONTENT_TYPE, GateCounts, GateGauges, Metrics, default_metrics

log = logging.getLogger(__name__)
JsonReply = tuple[Response, int]
# Column widths in app/store/schema.py: a longer id cannot name a delivery or a gate.
MAX_DELIVERY_ID = 100
DEFAULT_DATABASE_SLOTS = 6
DEFAULT_DATABASE_QUEUE = 8
# Stacksona's callbacks have database slots of their own: a flood of deliveries must not turn a
# reviewer's decision away (Stacksona does not call again; the gate would wait for its next poll),
# and unsigned callbacks cannot take the slots of GitHub's deliveries either. Waking a gate is one
# short statement, so a reviewer's burst of decisions queues rather than being refused.
CALLBACK_SLOTS = 1
CALLBACK_QUEUE = 5
CALLBACK_THREADS = CALLBACK_SLOTS + CALLBACK_QUEUE


def create_app(
    settings: Settings,
    store: Store,
    *,
    metrics: Metrics | None = None,
    on_new_work: Callable[[], None] = lambda: None,
    database_slots: int = DEFAULT_DATABASE_SLOTS,
    database_queue: int = DEFAULT_DATABASE_QUEUE,
) -> Flask:
    app = Flask("app")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_webhook_bytes
    metrics = metrics or default_metrics()
    slots = DatabaseSlots(database_slots, queue=database_queue)
    callback_slots = DatabaseSlots(CALLBACK_SLOTS, queue=CALLBACK_QUEUE)
    _add_webhooks(app, settings, store, (slots, callback_slots), metrics, on_new_work)
    _add_probes(app, store, slots, metrics)
    _add_error_answers(app, settings)
    return app


def _add_webhooks(
    app: Flask,
    settings: Settings,
    store: Store,
    slots: tuple[DatabaseSlots, DatabaseSlots],
    metrics: Metrics,
    on_new_work: Callable[[], None],
) -> None:
    delivery_slots, callback_slots = slots

    def answer(
        handler: Callable[[Settings, Store, DatabaseSlots], Answer], lane: DatabaseSlots, count: Callable[[str], None]
    ) -> JsonReply:
        try:
            status, body = handler(settings, store, lane)
        except HTTPException as exc:  # e.g. Werkzeug's 413 for a Content-Length over the limit
            count("too_large" if exc.code == 413 else str(exc.code))
            raise
        except Exception:
            count("error")
            raise
        count(body.get("outcome", str(status)))
        if status == 202:
            on_new_work()
        return jsonify(body), status

    @app.post("/webhooks/github")
    def github_webhook() -> JsonReply:
        return answer(handle_github_delivery, delivery_slots, metrics.webhook)

    @app.post("/webhooks/stacksona")
    def stacksona_callback() -> JsonReply:
        return answer(handle_stacksona_callback, callback_slots, metrics.callback)


def _add_probes(app: Flask, store: Store, slots: DatabaseSlots, metrics: Metrics) -> None:
    @app.get("/healthz")
    def healthz() -> JsonReply:
        return jsonify({"status": "ok"}), 200

    @app.get("/readyz")
    def readyz() -> JsonReply:
        with slots.held(wait=False) as held:  # a probe never queues
            if not held:
                return jsonify({"status": "database busy"}), 503
            try:
                store.gates.ping()
            except SQLAlchemyError as exc:
                log.warning("readiness check failed: %s", type(exc).__name__)
                return jsonify({"status": "database unreachable"}), 503
        return jsonify({"status": "ready"}), 200

    def read_gates() -> GateCounts | None:
        with slots.held(wait=False) as held:  # a scrape never queues
            if not held:
                return None
            try:
                return GateCounts(store.gates.count_by_state(), store.gates.oldest_open_age())
            except SQLAlchemyError as exc:
                log.warning("gate gauges not read: %s", type(exc).__name__)
                return None

    @app.get("/metrics")
    def metrics_page() -> Response:
        return Response(metrics.exposition(GateGauges(read_gates)), content_type=CONTENT_TYPE)


def _add_error_answers(app: Flask, settings: Settings) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int, list[tuple[str, str]]]:
        # Werkzeug answers its 400/404/405/413 in HTML; webhook senders read JSON.
        code = error.code or 500
        message = f"body larger than {settings.max_webhook_bytes} bytes" if code == 413 else error.name
        headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
        return jsonify({"error": message}), code, headers

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> JsonReply:
        # One line, no request text in it; the traceback only at DEBUG.
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        log.error("internal error in %s: %s at %s", request.endpoint or "routing", type(error).__name__, where)
        log.debug("internal error traceback", exc_info=error)
        return jsonify({"error": "internal error"}), 500


def _header(name: str, limit: int = MAX_HEADER) -> str:
    """A header's text, "" when absent; RejectedInput when present but not clean text."""
    raw = request.headers.get(name)
    if raw is None or not raw.strip(" \t"):
        return ""
    text = clean_text(raw, limit=limit)
    if text is None:
        raise RejectedInput(f"{name} header is longer than {limit} characters or not printable text")
    return text


def handle_github_delivery(settings: Settings, store: Store, slots: DatabaseSlots) -> Answer:
    body = _read_body(settings.max_webhook_bytes)
    if body is None:
        error = f"body larger than {settings.max_webhook_bytes} bytes"
        return _refused(413, error, "too_large", _unverified_delivery_id())
    signature = clean_text(request.headers.get("X-Hub-Signature-256", ""), limit=MAX_HEADER)
    if not is_valid_signature(settings.github_webhook_secret.reveal(), body, signature):
        return _refused(401, "missing or invalid X-Hub-Signature-256", "bad_signature", _unverified_delivery_id())
    try:
        event, delivery_id = _header("X-GitHub-Event"), _header("X-GitHub-Delivery", MAX_DELIVERY_ID)
    except RejectedInput as exc:
        return _rejected(str(exc), delivery_id=None)
    if event == "ping":
        return 200, {"outcome": "pong"}
    if event != "deployment_protection_rule":
        return 200, {"outcome": "ignored", "reason": f"event {event or '<none>'!r} is not handled"}
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return _rejected("body is not valid JSON", delivery_id)
    if not isinstance(payload, dict):
        return _rejected("body must be a JSON object", delivery_id)
    if (action := payload.get("action")) != "requested":
        return 200, {"outcome": "ignored", "reason": f"action {action!r} is not handled"}
    if not delivery_id:
        return _rejected("X-GitHub-Delivery header is missing", delivery_id)
    return _store_delivery(settings, store, slots, delivery_id, payload)


def _rejected(error: str, delivery_id: str | None) -> Answer:
    # Signed by GitHub yet unusable: a deployment waits on a gate that will never open.
    return _refused(400, error, "bad_request", delivery_id)


def _refused(status: int, error: str, outcome: str, delivery_id: str | None) -> Answer:
    """The one WARNING line of a refused delivery: its id and the reason, never its headers or body."""
    context = {"delivery_id": delivery_id} if delivery_id else {}
    log.warning("delivery %s refused with %s: %s", delivery_id or "<no usable id>", status, error, extra=context)
    return status, {"error": error, "outcome": outcome}


def _unverified_delivery_id() -> str | None:
    """X-GitHub-Delivery of a request not (yet) proven to come from GitHub: for the log line only, and only if clean."""
    return clean_text(request.headers.get("X-GitHub-Delivery", ""), limit=MAX_DELIVERY_ID)


def _read_body(limit: int) -> bytes | None:
    """The raw body, or None when it is larger than `limit`.

    With a Content-Length, Flask's MAX_CONTENT_LENGTH already answered 413. A
    chunked body has none, and Werkzeug would silently cut it at the limit: the
    signature check would then call a merely large delivery forged.
    """
    if request.content_length is not None:
        # Refused here, not by Flask's MAX_CONTENT_LENGTH, so it is answered and logged like any refusal.
        return None if request.content_length > limit else request.get_data(cache=False)
    if not request.environ.get("wsgi.input_terminated"):
        return b""
    body: bytes = request.environ["wsgi.input"].read(limit + 1)
    return None if len(body) > limit else body


def _store_delivery(
    settings: Settings, store: Store, slots: DatabaseSlots, delivery_id: str, payload: object
) -> Answer:
    try:
        deployment = parse_deployment_request(payload, settings.github_api_url)
    except PayloadError as exc:
        return _rejected(str(exc), delivery_id)
    # The central policy's deadline; a repository's file may still shorten it when Stacksona is asked.
    deadline = settings.gate_policy(deployment.full_name, deployment.environment).deadline_seconds
    context: dict[str, Any] = {
        "delivery_id": delivery_id,
        "repository": deployment.full_name,
        "run_id": deployment.run_id,
        "environment": deployment.environment,
    }
    queued_at = time.monotonic()
    with slots.held() as held:
        if not held:
            log.warning("delivery %s not stored: every database slot is busy", delivery_id, extra=context)
            return BUSY
        # Stored with the deliveries arriving meanwhile (group commit); the wait for a slot counts against the turn.
        wait = max(0.0, slots.max_wait - (time.monotonic() - queued_at))
        try:
            gate_id, outcome = store.deliveries.accept(
                delivery_id, deployment, deadline_seconds=deadline, wait_seconds=wait
            )
        except StoreBusy:
            log.warning("delivery %s not stored: the database is too slow to take it", delivery_id, extra=context)
            return BUSY
        except SQLAlchemyError as exc:
            # The transaction rolled back: GitHub may redeliver, nothing was stored.
            log.error("delivery %s not stored: %s", delivery_id, error_reason(exc), extra=context)
            return 503, {"error": "cannot store the delivery right now; redeliver it", "outcome": "unavailable"}
    log.info(
        "delivery %s for %s run %s [%s]: gate %s %s",
        delivery_id,
        deployment.full_name,
        deployment.run_id,
        deployment.environment,
        gate_id,
        outcome,
        extra=context | {"gate_id": gate_id},
    )
    return 202, {"gate_id": gate_id, "outcome": str(outcome)}
