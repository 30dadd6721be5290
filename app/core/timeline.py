"""The event a closed gate adds to its Stacksona task's reviewer timeline (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.gate import Change, Gate


@dataclass(frozen=True)
class TimelineEvent:
    event_type: str
    summary: str
    payload: dict[str, Any]


def timeline_event(gate: Gate, change: Change) -> TimelineEvent:
    payload = {
        "repository": gate.full_name,
        "environment": gate.environment,
        "run_id": gate.run_id,
        "outcome": str(change.state),
    }
    return TimelineEvent(f"github_deployment_{change.state}", change.reason, payload)
