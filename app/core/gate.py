"""What a gate is: the deployment it gates, its states, its record, its history, and a step's result (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

OPEN_STATES = ("new", "awaiting_review", "reporting")
FINAL_STATES = ("approved", "rejected", "superseded", "failed")


@dataclass(frozen=True)
class DeploymentRequest:
    """What one `deployment_protection_rule` delivery asks us to gate."""

    repository_id: int
    owner: str
    repo: str
    installation_id: int
    run_id: int
    environment: str
    event: str
    ref: str
    sha: str
    actor: str
    pull_requests: tuple[int, ...]
    deployment_id: int | None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


class AcceptOutcome(StrEnum):
    CREATED = "created"
    JOINED = "joined"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Gate:
    id: int
    task_id: str
    state: str
    repository_id: int
    owner: str
    repo: str
    installation_id: int
    run_id: int
    environment: str
    event: str
    ref: str
    sha: str
    actor: str
    pull_requests: tuple[int, ...]
    deployment_id: int | None
    thread_id: str | None
    verdict: str | None
    verdict_reason: str | None
    reviewer_message: str | None
    status_reported: bool
    attempts: int
    polls: int
    next_attempt_at: float
    generation: int
    deadline_at: float
    created_at: float
    updated_at: float
    closed_at: float | None
    last_error: str | None
    lease_owner: str | None = None
    answered_at: float | None = None
    review_sent_at: float | None = None
    token_checked: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    from_state: str | None
    to_state: str
    reason: str


@dataclass(frozen=True)
class Change:
    """The result of one worker step: new state, reason, and other columns."""

    state: str
    reason: str
    values: Mapping[str, Any] = field(default_factory=dict)
    # Unchanged state is recorded only when it explains something (a retry).
    record: bool = True
