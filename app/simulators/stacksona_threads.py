"""The Stacksona simulator's records: threads, recorded requests, what it answers about them (no I/O)."""

from __future__ import annotations

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
