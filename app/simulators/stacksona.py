"""Stacksona simulator: the Gate Agent API plus a scriptable human reviewer.

Creating a request is idempotent here by default (the task id or the
Idempotency-Key replays the first answer). Stacksona does not document that, so
`idempotent_creates = False` behaves like the least forgiving real service: every
create opens a new thread, and a lookup by task lists all of the task's threads.
"""

from __future__ import annotations

import hmac
import threading
from collections import deque
from collections.abc import Mapping
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
from app.simulators.stacksona_threads import RecordedRequest, Thread, ThreadBook

StacksonaRoute = Literal["create", "poll", "validate", "events"]
# What happens to the answer of a create that took effect: held back, or replaced by an error status.
LostAnswer = Literal["stall"] | int
# Bounded so a test that forgets `release_stalled_creates` cannot wedge a server thread.
_MAX_STALL_SECONDS = 60.0


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


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

    def __init__(
        self,
        *,
        api_key: str,
        callback_url: str | None = None,
        signed_tokens: bool = True,
        idempotent_creates: bool = True,
        port: int = 0,
    ) -> None:
        self.callback_url = callback_url
        self.paused = False
        # False: every create opens a new thread, Idempotency-Key ignored (see the module docstring).
        self.idempotent_creates = idempotent_creates
        self._api_key = api_key
        self._signed_tokens = signed_tokens
        self._lock = threading.Lock()
        self._faults = FaultPlan(("create", "poll", "validate", "events"), lambda s: {"error": status_phrase(s)})
        self._book = ThreadBook()  # guarded by self._lock
        self._lookups: list[str] = []
        self._lost_answers: deque[LostAnswer] = deque()
        self._stall_release = threading.Event()
        self._validations: list[tuple[str, str, bool]] = []
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._callback_errors: list[str] = []
        super().__init__(_url_map(), port)

    @property
    def url(self) -> str:
        return self._server.base_url

    def script(self, environment: str, status: str, *, message: str = "") -> None:
        """What new requests for `environment` answer at once (default pending_review)."""
        with self._lock:
            self._book.script(environment, status, message)

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
            notice = self._book.decide(thread_id, decision, message, issue_token=self._signed_tokens)
        url = self.callback_url
        if send_callback and url:
            self._send_callback(_with_token(url, callback_token), notice, callback_token)

    def set_poll_status(self, thread_id: str, status: str) -> None:
        with self._lock:
            self._book.thread(thread_id).status = status

    def thread_for_task(self, task_id: str) -> str | None:
        """The newest thread opened for the task."""
        with self._lock:
            return self._book.newest_for_task(task_id)

    def threads_for_task(self, task_id: str) -> list[str]:
        """Every thread opened for the task, oldest first (more than one only without idempotency)."""
        with self._lock:
            return self._book.all_for_task(task_id)

    def view(self, thread_id: str) -> dict[str, Any] | None:
        """What a poll answers about the thread now (None: unknown)."""
        with self._lock:
            return self._book.view(thread_id)

    def pending_threads(self) -> list[str]:
        with self._lock:
            return self._book.pending()

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

    def stall_next_create(self) -> None:
        """The next create takes effect, then its answer is held back until `release_stalled_creates`.

        The caller times out while Stacksona has the request (at most 60 s).
        """
        with self._lock:
            self._lost_answers.append("stall")

    def release_stalled_creates(self) -> None:
        with self._lock:
            release, self._stall_release = self._stall_release, threading.Event()
        release.set()

    def fail_next_create_after_recording(self, status: int) -> None:
        """The next create takes effect, then a proxy in between answers `status` instead (e.g. 502)."""
        with self._lock:
            self._lost_answers.append(status)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._book.requests)

    @property
    def lookups(self) -> list[str]:
        """Task ids looked up with `GET /api/agent/decisions?task_id=`, in order."""
        with self._lock:
            return list(self._lookups)

    @property
    def replays(self) -> int:
        with self._lock:
            return self._book.replays

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

    @property
    def _threads(self) -> dict[str, Thread]:
        # tests/test_secrets_audit.py reads every approval token issued, spent or not, from here.
        return self._book.threads

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
            status, answer = self._book.create_or_replay(task_id, key, body, idempotent=self.idempotent_creates)
            lost = self._lost_answers.popleft() if status < 300 and self._lost_answers else None
            release = self._stall_release
        if lost == "stall":
            release.wait(_MAX_STALL_SECONDS)
        elif isinstance(lost, int):
            return _error(lost, status_phrase(lost))
        return json_response(status, answer)

    def _poll(self, request: Request) -> Response:
        thread_id = request.args.get("thread_id")
        task_id = request.args.get("task_id")
        if not thread_id and not task_id:
            return _error(400, "thread_id or task_id is required")
        with self._lock:
            if not thread_id and task_id:
                self._lookups.append(task_id)
                if not self.idempotent_creates:
                    return json_response(200, {"decisions": self._book.task_views(task_id)})
                thread_id = self._book.newest_for_task(task_id)
            view = self._book.view(thread_id or "")
        return _error(404, "not found") if view is None else json_response(200, view)

    def _validate(self, request: Request) -> Response:
        body = parse_json_object(request.get_data())
        if body is None:
            return _error(400, "body must be a JSON object")
        task_id, signature = body.get("task_id"), body.get("signature")
        if not isinstance(task_id, str) or not isinstance(signature, str):
            return json_response(200, {"valid": False, "reason": "task_id and signature required"})
        with self._lock:
            reason = self._book.spend_token(task_id, signature)
            self._validations.append((task_id, signature, reason is None))
        if reason is not None:
            return json_response(200, {"valid": False, "reason": reason})
        return json_response(200, {"valid": True, "task_id": task_id})

    def _add_event(self, request: Request, task_id: str) -> Response:
        body = parse_json_object(request.get_data())
        event_type = None if body is None else body.get("event_type")
        if body is None or not isinstance(event_type, str) or not event_type:
            return _error(422, "event_type is required")
        with self._lock:
            self._events.append((task_id, body))
        return json_response(201, {"ok": True})
