"""Stacksona simulator: the Gate Agent API plus a scriptable human reviewer."""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import (
    FaultPlan,
    SimulatorBase,
    json_response,
    parse_json_object,
    status_phrase,
)

StacksonaRoute = Literal["create", "poll", "validate", "events"]
RISK_LEVELS = ("low", "medium", "high", "critical")
_FINAL = frozenset({"allow", "reject", "approved", "rejected"})
_REQUIRED_TEXT = ("workflow_name", "task_label", "subject", "tool_name")


@dataclass(frozen=True)
class RecordedRequest:
    task_id: str
    idempotency_key: str | None
    body: dict[str, Any]
    thread_id: str


@dataclass
class _Thread:
    thread_id: str
    task_id: str
    workflow_name: str
    task_label: str
    status: str
    message: str
    decided_at: str | None = None
    approval_token: str | None = field(default=None, repr=False)
    token_spent: bool = False


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _is_nested(value: object) -> bool:
    # Gate rules match on flat payload keys; lists of scalars (PR numbers) are fine.
    if isinstance(value, list):
        return any(isinstance(item, dict | list) for item in value)
    return isinstance(value, dict)


def _request_problem(body: dict[str, Any] | None) -> str | None:
    if body is None:
        return "body must be a JSON object"
    for name in _REQUIRED_TEXT:
        if not isinstance(body.get(name), str) or not body[name].strip():
            return f"{name} is required"
    if body.get("risk_level") not in RISK_LEVELS:
        return f"risk_level must be one of {', '.join(RISK_LEVELS)}"
    summary = body.get("summary", [])
    if not isinstance(summary, list) or not all(isinstance(s, str) for s in summary):
        return "summary must be a list of strings"
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return "payload must be an object"
    nested = sorted(key for key, value in payload.items() if _is_nested(value))
    return f"payload must be flat; nested values under {', '.join(nested)}" if nested else None


def _view(thread: _Thread) -> dict[str, Any]:
    """What create replays and polls answer about a thread."""
    view: dict[str, Any] = {
        "status": thread.status,
        "thread_id": thread.thread_id,
        "task_id": thread.task_id,
        "message": thread.message,
    }
    if thread.decided_at is not None:
        view["decided_at"] = thread.decided_at
    if thread.status == "approved" and thread.approval_token is not None:
        view["approval_token"] = thread.approval_token
    return view


def _callback_notice(thread: _Thread) -> dict[str, Any]:
    return {
        "thread_id": thread.thread_id,
        "task_id": thread.task_id,
        "decision": thread.status,
        "message": thread.message,
        "tenant_id": "tenant_sim",
        "workflow_name": thread.workflow_name,
        "task_label": thread.task_label,
    }


def _url_map() -> Map:
    return Map(
        [
            Rule("/api/agent/tasks/<task_id>/requests", endpoint="create", methods=["POST"]),
            Rule("/api/agent/decisions", endpoint="poll", methods=["GET"]),
            Rule("/api/agent/approvals/validate", endpoint="validate", methods=["POST"]),
            Rule("/api/agent/tasks/<task_id>/events", endpoint="events", methods=["POST"]),
        ]
    )


def _with_token(url: str, token: str | None) -> str:
    if token is None:
        return url
    return url + ("&" if "?" in url else "?") + urlencode({"token": token})


class StacksonaSimulator(SimulatorBase):
    """A Stacksona Gate on loopback whose reviewer decisions the caller scripts."""

    def __init__(self, *, api_key: str, callback_url: str | None = None, signed_tokens: bool = True) -> None:
        self.callback_url = callback_url
        self.paused = False
        self._api_key = api_key
        self._signed_tokens = signed_tokens
        self._lock = threading.Lock()
        self._faults = FaultPlan(("create", "poll", "validate", "events"), lambda s: {"error": status_phrase(s)})
        self._scripts: dict[str, tuple[str, str]] = {}
        self._threads: dict[str, _Thread] = {}
        self._by_task: dict[str, str] = {}
        self._by_key: dict[str, str] = {}
        self._requests: list[RecordedRequest] = []
        self._replays = 0
        self._validations: list[tuple[str, str, bool]] = []
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._callback_errors: list[str] = []
        super().__init__(_url_map())

    @property
    def url(self) -> str:
        return self._server.base_url

    def script(self, environment: str, status: str, *, message: str = "") -> None:
        """What new requests for `environment` answer at once (default pending_review)."""
        with self._lock:
            self._scripts[environment] = (status, message)

    def decide(
        self,
        thread_id: str,
        decision: Literal["approved", "rejected"],
        *,
        message: str = "",
        send_callback: bool = True,
        callback_token: str | None = None,
    ) -> None:
        """The human reviewer decides; then Stacksona calls the webhook (synchronously)."""
        if decision not in ("approved", "rejected"):
            raise ValueError(f"decision must be approved or rejected, not {decision!r}")
        with self._lock:
            thread = self._thread(thread_id)
            if thread.status in _FINAL:
                raise ValueError(f"thread {thread_id} is already {thread.status}")
            thread.status, thread.message, thread.decided_at = decision, message, _now()
            if decision == "approved" and self._signed_tokens:
                thread.approval_token = "sat_" + secrets.token_urlsafe(32)
            notice = _callback_notice(thread)
        url = self.callback_url
        if send_callback and url:
            self._send_callback(_with_token(url, callback_token), notice, callback_token)

    def set_poll_status(self, thread_id: str, status: str) -> None:
        with self._lock:
            self._thread(thread_id).status = status

    def thread_for_task(self, task_id: str) -> str | None:
        with self._lock:
            return self._by_task.get(task_id)

    def pending_threads(self) -> list[str]:
        with self._lock:
            return [t.thread_id for t in self._threads.values() if t.status == "pending_review"]

    def fail_next(
        self,
        route: StacksonaRoute,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: object | None = None,
    ) -> None:
        """Queues failures; a str `body` is sent as-is (non-JSON), anything else as JSON."""
        self._faults.fail_next(route, status, times=times, headers=headers, body=body)

    def set_delay(self, route: StacksonaRoute, seconds: float) -> None:
        self._faults.set_delay(route, seconds)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def replays(self) -> int:
        with self._lock:
            return self._replays

    @property
    def validations(self) -> list[tuple[str, str, bool]]:
        with self._lock:
            return list(self._validations)

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self._events)

    @property
    def callback_errors(self) -> list[str]:
        with self._lock:
            return list(self._callback_errors)

    def _thread(self, thread_id: str) -> _Thread:
        thread = self._threads.get(thread_id)
        if thread is None:
            raise KeyError(f"unknown thread {thread_id!r}")
        return thread

    def _send_callback(self, url: str, notice: dict[str, Any], token: str | None) -> None:
        try:
            response = httpx.post(url, json=notice, timeout=5.0)
        except httpx.HTTPError as exc:
            detail = str(exc).replace(token, "***") if token else str(exc)
            error = f"{type(exc).__name__}: {detail}"
        else:
            if not response.is_error:
                return
            error = f"callback answered HTTP {response.status_code}"
        with self._lock:
            self._callback_errors.append(error)

    def _not_found(self) -> Response:
        return _error(404, "not found")

    def _handle(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        refusal = self._faults.intercept(endpoint) or self._refuse(request)
        if refusal is not None:
            return refusal
        if endpoint == "create":
            return self._create(request, str(args["task_id"]))
        if endpoint == "poll":
            return self._poll(request)
        if endpoint == "validate":
            return self._validate(request)
        return self._add_event(request, str(args["task_id"]))

    def _refuse(self, request: Request) -> Response | None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self._api_key.encode()):
            return _error(401, "invalid api key")
        return _error(403, "agent paused") if self.paused else None

    def _create(self, request: Request, task_id: str) -> Response:
        body = parse_json_object(request.get_data())
        key = request.headers.get("Idempotency-Key")
        with self._lock:
            known = self._by_task.get(task_id) or (self._by_key.get(key) if key else None)
            if known is not None:
                self._replays += 1
                return json_response(200, _view(self._threads[known]))
            problem = _request_problem(body)
            if problem is not None or body is None:
                return _error(422, problem or "body must be a JSON object")
            thread = self._open_thread(task_id, body)
            if key:
                self._by_key[key] = thread.thread_id
            self._requests.append(RecordedRequest(task_id, key, body, thread.thread_id))
        return json_response(201, _view(thread))

    def _open_thread(self, task_id: str, body: dict[str, Any]) -> _Thread:
        """Creates the decision; the caller holds the lock."""
        environment = body["payload"].get("environment")
        scripted = self._scripts.get(environment) if isinstance(environment, str) else None
        status, message = scripted or ("pending_review", "")
        thread = _Thread(
            thread_id="thr_" + secrets.token_hex(8),
            task_id=task_id,
            workflow_name=body["workflow_name"],
            task_label=body["task_label"],
            status=status,
            message=message,
            decided_at=_now() if status in _FINAL else None,
        )
        self._threads[thread.thread_id] = thread
        self._by_task[task_id] = thread.thread_id
        return thread

    def _poll(self, request: Request) -> Response:
        thread_id = request.args.get("thread_id")
        task_id = request.args.get("task_id")
        if not thread_id and not task_id:
            return _error(400, "thread_id or task_id is required")
        with self._lock:
            if not thread_id and task_id:
                thread_id = self._by_task.get(task_id)
            thread = self._threads.get(thread_id or "")
            view = None if thread is None else _view(thread)
        return _error(404, "not found") if view is None else json_response(200, view)

    def _validate(self, request: Request) -> Response:
        body = parse_json_object(request.get_data())
        if body is None:
            return _error(400, "body must be a JSON object")
        task_id, signature = body.get("task_id"), body.get("signature")
        if not isinstance(task_id, str) or not isinstance(signature, str):
            return json_response(200, {"valid": False, "reason": "task_id and signature required"})
        with self._lock:
            reason = self._spend_token(task_id, signature)
            self._validations.append((task_id, signature, reason is None))
        if reason is not None:
            return json_response(200, {"valid": False, "reason": reason})
        return json_response(200, {"valid": True, "task_id": task_id})

    def _spend_token(self, task_id: str, signature: str) -> str | None:
        """Why the token is not valid, or None after spending it; the caller holds the lock."""
        thread_id = self._by_task.get(task_id)
        thread = None if thread_id is None else self._threads[thread_id]
        if thread is None or thread.approval_token is None:
            return "no approval token was issued for this task"
        if not hmac.compare_digest(signature.encode(), thread.approval_token.encode()):
            return "signature does not match"
        if thread.token_spent:
            return "approval token already used"
        thread.token_spent = True
        return None

    def _add_event(self, request: Request, task_id: str) -> Response:
        body = parse_json_object(request.get_data())
        event_type = None if body is None else body.get("event_type")
        if body is None or not isinstance(event_type, str) or not event_type:
            return _error(422, "event_type is required")
        with self._lock:
            self._events.append((task_id, body))
        return json_response(201, {"ok": True})
