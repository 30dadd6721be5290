"""What a gate is: the deployment it gates, its states, its record, its history, and a step's result (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class GateState(StrEnum):
    """Where a gate is; see docs/architecture.md for the transitions."""

    NEW = "new"  # stored, Stacksona not asked yet
    AWAITING_REVIEW = "awaiting_review"  # a human reviewer must decide
    REPORTING = "reporting"  # verdict known, the review is being sent to GitHub
    APPROVED = "approved"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # GitHub had nothing pending any more, or the run finished while waiting
    FAILED = "failed"  # GitHub refused the review for a reason retrying cannot fix


OPEN_STATES = (GateState.NEW, GateState.AWAITING_REVIEW, GateState.REPORTING)
FINAL_STATES = (GateState.APPROVED, GateState.REJECTED, GateState.SUPERSEDED, GateState.FAILED)
# What a gate's verdict (and so its final review) can be.
VERDICTS = (GateState.APPROVED, GateState.REJECTED)


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
    state: GateState
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
    verdict: GateState | None
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
    request_sent_at: float | None = None
    # The effective policy as JSON (app.core.policy.GatePolicy), fixed when Stacksona is first asked.
    policy: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repo}"


@dataclass(frozen=True)
class HistoryEntry:
    at: float
    from_state: GateState | None
    to_state: GateState
    reason: str


@dataclass(frozen=True)
class Change:
    """The result of one worker step: new state, reason, and other columns."""

    state: GateState
    reason: str
    values: Mapping[str, Any] = field(default_factory=dict)
    # Unchanged state is recorded only when it explains something (a retry).
    record: bool = True
    # An operator must act (a configuration fault): logged at ERROR every time.
    alert: str | None = None
