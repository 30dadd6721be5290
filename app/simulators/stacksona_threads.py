"""The Stacksona simulator's records: threads, recorded requests, what it answers about them (no I/O)."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

RISK_LEVELS = ("low", "medium", "high", "critical")
FINAL_STATUSES = frozenset({"allow", "reject", "approved", "rejected"})
_REQUIRED_TEXT = ("workflow_name", "task_label", "subject", "tool_name")


@dataclass(frozen=True)
class RecordedRequest:
    task_id: str
    idempotency_key: str | None
    body: dict[str, Any]
    thread_id: str


@dataclass
class Thread:
    thread_id: str
    task_id: str
    workflow_name: str
    task_label: str
    status: str
    message: str
    decided_at: str | None = None
    approval_token: str | None = field(default=None, repr=False)
    token_spent: bool = False


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_nested(value: object) -> bool:
    # Gate rules match on flat payload keys; lists of scalars (PR numbers) are fine.
    if isinstance(value, list):
        return any(isinstance(item, dict | list) for item in value)
    return isinstance(value, dict)


def request_problem(body: dict[str, Any] | None) -> str | None:
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


def thread_view(thread: Thread) -> dict[str, Any]:
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


def callback_notice(thread: Thread) -> dict[str, Any]:
    return {
        "thread_id": thread.thread_id,
        "task_id": thread.task_id,
        "decision": thread.status,
        "message": thread.message,
        "tenant_id": "tenant_sim",
        "workflow_name": thread.workflow_name,
        "task_label": thread.task_label,
    }


class ThreadBook:
    """Every thread Stacksona opened, found by id, task or Idempotency-Key; the caller holds its lock throughout."""

    def __init__(self) -> None:
        self.threads: dict[str, Thread] = {}
        self.requests: list[RecordedRequest] = []
        self.replays = 0
        self._scripts: dict[str, tuple[str, str]] = {}
        self._by_task: dict[str, str] = {}
        self._task_threads: dict[str, list[str]] = {}
        self._by_key: dict[str, str] = {}

    def script(self, environment: str, status: str, message: str) -> None:
        self._scripts[environment] = (status, message)

    def thread(self, thread_id: str) -> Thread:
        thread = self.threads.get(thread_id)
        if thread is None:
            raise KeyError(f"unknown thread {thread_id!r}")
        return thread

    def newest_for_task(self, task_id: str) -> str | None:
        return self._by_task.get(task_id)

    def all_for_task(self, task_id: str) -> list[str]:
        return list(self._task_threads.get(task_id, []))

    def view(self, thread_id: str) -> dict[str, Any] | None:
        thread = self.threads.get(thread_id)
        return None if thread is None else thread_view(thread)

    def task_views(self, task_id: str) -> list[dict[str, Any]]:
        """Every thread of the task, newest first (empty when unknown)."""
        return [thread_view(self.threads[t]) for t in reversed(self._task_threads.get(task_id, []))]

    def pending(self) -> list[str]:
        return [t.thread_id for t in self.threads.values() if t.status == "pending_review"]

    def decide(self, thread_id: str, decision: str, message: str, *, issue_token: bool) -> dict[str, Any]:
        """Records the reviewer's decision; returns the notice the callback sends about it."""
        thread = self.thread(thread_id)
        if thread.status in FINAL_STATUSES:
            raise ValueError(f"thread {thread_id} is already {thread.status}")
        thread.status, thread.message, thread.decided_at = decision, message, now_text()
        if decision == "approved" and issue_token:
            thread.approval_token = "sat_" + secrets.token_urlsafe(32)
        return callback_notice(thread)

    def create_or_replay(
        self, task_id: str, key: str | None, body: dict[str, Any] | None, *, idempotent: bool
    ) -> tuple[int, Any]:
        """The answer's status and body."""
        known = self._known_thread(task_id, key) if idempotent else None
        if known is not None:
            self.replays += 1
            return 200, thread_view(self.threads[known])
        problem = request_problem(body)
        if problem is not None or body is None:
            return 422, {"error": problem or "body must be a JSON object"}
        thread = self._open_thread(task_id, body)
        if key:
            self._by_key[key] = thread.thread_id
        self.requests.append(RecordedRequest(task_id, key, body, thread.thread_id))
        return 201, thread_view(thread)

    def spend_token(self, task_id: str, signature: str) -> str | None:
        """Why the token is not valid, or None after spending it."""
        threads = [self.threads[t] for t in self._task_threads.get(task_id, [])]
        issued = [t for t in threads if t.approval_token is not None]
        if not issued:
            return "no approval token was issued for this task"
        signed = signature.encode()
        thread = next((t for t in issued if hmac.compare_digest(signed, str(t.approval_token).encode())), None)
        if thread is None:
            return "signature does not match"
        if thread.token_spent:
            return "approval token already used"
        thread.token_spent = True
        return None

    def _known_thread(self, task_id: str, key: str | None) -> str | None:
        return self._by_task.get(task_id) or (self._by_key.get(key) if key else None)

    def _open_thread(self, task_id: str, body: dict[str, Any]) -> Thread:
        """Creates the decision: the environment's scripted status, else pending_review."""
        environment = body["payload"].get("environment")
        scripted = self._scripts.get(environment) if isinstance(environment, str) else None
        status, message = scripted or ("pending_review", "")
        thread = Thread(
            thread_id="thr_" + secrets.token_hex(8),
            task_id=task_id,
            workflow_name=body["workflow_name"],
            task_label=body["task_label"],
            status=status,
            message=message,
            decided_at=now_text() if status in FINAL_STATUSES else None,
        )
        self.threads[thread.thread_id] = thread
        self._by_task[task_id] = thread.thread_id
        self._task_threads.setdefault(task_id, []).append(thread.thread_id)
        return thread
