"""Stacksona's decision callbacks: an unsigned wake-up for the gate of a thread, never a decision.

The App acts only on what its own poll of Stacksona says (docs/architecture.md,
"Stacksona facts"): a callback makes that poll happen now instead of at the
gate's next scheduled poll.
"""

from __future__ import annotations

import hmac
import json
import logging

from flask import request
from sqlalchemy.exc import SQLAlchemyError

from app.core.gate import OPEN_STATES
from app.http.guards import BUSY, MAX_HEADER, Answer, DatabaseSlots, RejectedInput, clean_text
from app.settings import Settings
from app.store import Store
from app.store.engine import error_reason
from app.telemetry.logs import gate_context

log = logging.getLogger(__name__)
# Column widths in app/store/schema.py: a longer id cannot name a gate.
MAX_THREAD_ID = 200
MAX_TASK_ID = 120


def handle_stacksona_callback(settings: Settings, store: Store, slots: DatabaseSlots) -> Answer:
    if settings.stacksona_webhook_token and not _has_callback_token(settings.stacksona_webhook_token.reveal()):
        # Stacksona's token and ours differ: worth an operator's look, unlike a malformed callback.
        return _callback_refused(401, "missing or wrong callback token", "bad_token", logging.WARNING)
    data = _json_body()
    if not isinstance(data, dict):
        return _callback_refused(400, "body must be a JSON object", "bad_request")
    try:
        thread_id = _callback_id(data.get("thread_id") or data.get("id"), "thread_id", MAX_THREAD_ID)
        task_id = _callback_id(data.get("task_id"), "task_id", MAX_TASK_ID)
    except RejectedInput as exc:
        return _callback_refused(400, str(exc), "bad_request")
    if not thread_id and not task_id:
        return _callback_refused(400, "thread_id or task_id is required", "bad_request")
    with slots.held() as held:
        if not held:
            return BUSY
        try:
            gate = store.gates.wake(thread_id=thread_id, task_id=task_id)
        except SQLAlchemyError as exc:
            log.error("callback not handled: %s", error_reason(exc))
            return 503, {"error": "database unavailable", "outcome": "unavailable"}
    if gate is None:
        return _callback_refused(404, "no gate for this thread", "unknown_thread", ids=(thread_id, task_id))
    # The callback is unsigned: it only makes the gate poll Stacksona now;
    # its `decision` field is never trusted.
    if gate.state not in OPEN_STATES:
        outcome = "already_closed"
    else:
        outcome = "woken" if gate.state == "awaiting_review" else "in_progress"
    log.info("callback for gate %s (%s): %s", gate.id, gate.state, outcome, extra=gate_context(gate))
    if outcome == "already_closed":
        return 200, {"gate_id": gate.id, "state": gate.state, "outcome": outcome}
    return 202, {"gate_id": gate.id, "outcome": outcome}


def _callback_refused(
    status: int, error: str, outcome: str, level: int = logging.INFO, ids: tuple[str | None, str | None] = (None, None)
) -> Answer:
    # Unauthenticated: anyone may send malformed callbacks, so these are INFO, one line each.
    log.log(level, "callback refused with %s: %s", status, error, extra={"thread_id": ids[0], "task_id": ids[1]})
    return status, {"error": error, "outcome": outcome}


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
        given = given or auth.removeprefix("Bearer ")
    token = clean_text(given, limit=MAX_HEADER)
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())


def _callback_id(value: object, name: str, limit: int) -> str | None:
    """A callback's id as text, None when absent or of another type; RejectedInput when unsafe."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if not text.strip(" \t"):
        return None
    if (clean := clean_text(text, limit=limit)) is None:
        raise RejectedInput(f"{name} is longer than {limit} characters or not printable text")
    return clean
