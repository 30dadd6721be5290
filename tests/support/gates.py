"""A gate record for the pure-rule tables: one in flight at `NOW`, any field overridable."""

from __future__ import annotations

from typing import Any

from app.core.gate import Gate, GateState

NOW = 1_800_000_000.0


def make_gate(**overrides: Any) -> Gate:
    fields: dict[str, Any] = {
        "id": 7,
        "task_id": "gh-1-2-production-abc",
        "state": GateState.REPORTING,
        "repository_id": 1,
        "owner": "acme",
        "repo": "shop",
        "installation_id": 9,
        "run_id": 2,
        "environment": "production",
        "event": "push",
        "ref": "main",
        "sha": "a" * 40,
        "actor": "octocat",
        "pull_requests": (),
        "deployment_id": 3,
        "thread_id": "th-1",
        "verdict": GateState.APPROVED,
        "verdict_reason": "allowed",
        "reviewer_message": "",
        "status_reported": False,
        "attempts": 0,
        "polls": 0,
        "next_attempt_at": NOW,
        "generation": 1,
        "deadline_at": NOW + 3600,
        "created_at": NOW - 60,
        "updated_at": NOW,
        "closed_at": None,
        "last_error": None,
    }
    return Gate(**(fields | overrides))
