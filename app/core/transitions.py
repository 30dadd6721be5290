"""How a gate moves while Stacksona decides, and when it is due next (pure).

Every function returns the `Change` a worker step writes; the store only
persists it (see docs/architecture.md, "Where each rule lives").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.core.backoff import poll_delay, retry_delay
from app.core.comments import format_time
from app.core.decision import Approve, Reject, Verdict
from app.core.gate import Change, Gate, GateState


def is_past_deadline(gate: Gate, now: float) -> bool:
    """Only gates still waiting for Stacksona time out; a known verdict is always reported."""
    return gate.state in (GateState.NEW, GateState.AWAITING_REVIEW) and now >= gate.deadline_at


def timed_out(gate: Gate) -> Change:
    deadline = format_time(gate.deadline_at)
    return to_reporting(gate, Reject(f"No Stacksona decision before the deadline ({deadline}): timed out"))


def to_reporting(gate: Gate, verdict: Verdict, thread_id: str | None = None) -> Change:
    state = GateState.APPROVED if isinstance(verdict, Approve) else GateState.REJECTED
    values = {
        "verdict": state,
        "verdict_reason": verdict.reason,
        "reviewer_message": verdict.message,
        "thread_id": thread_id or gate.thread_id,
        "attempts": 0,
        "last_error": None,
    }
    return Change(GateState.REPORTING, f"verdict {state}: {verdict.reason}", values)


def await_review(
    gate: Gate, thread_id: str | None, *, now: float, rand: Callable[[], float], poll_cap: float
) -> Change:
    """The first `pending_review` opens the wait; later ones schedule the next fallback poll."""
    values: dict[str, object]
    if gate.state is GateState.NEW:
        values = {"thread_id": thread_id, "attempts": 0, "polls": 0, "last_error": None}
        return Change(GateState.AWAITING_REVIEW, f"Stacksona asked a reviewer (thread {thread_id})", values)
    values = next_poll(gate, now=now, rand=rand, poll_cap=poll_cap) | {"attempts": 0, "last_error": None}
    return Change(gate.state, "still pending review", values, record=False)


def next_poll(gate: Gate, *, now: float, rand: Callable[[], float], poll_cap: float) -> dict[str, object]:
    """The next fallback poll of a gate awaiting its reviewer (never past its deadline)."""
    next_at = min(now + poll_delay(gate.polls, rand, cap=poll_cap), gate.deadline_at)
    return {"polls": gate.polls + 1, "next_attempt_at": next_at}


def retry_later(
    gate: Gate,
    reason: str,
    retry_after: float | None,
    *,
    now: float,
    rand: Callable[[], float],
    until: float | None,
) -> Change:
    """Back off exponentially (never past `until`); a long outage records only some retries."""
    delay = retry_delay(gate.attempts, rand, retry_after=retry_after)
    next_at = now + delay if until is None else min(now + delay, until)
    values = {"attempts": gate.attempts + 1, "next_attempt_at": next_at, "last_error": reason}
    record = gate.attempts < 3 or gate.attempts % 10 == 0
    return Change(gate.state, f"{reason}; retry {gate.attempts + 1} in {delay:.1f}s", values, record)


def after_internal_error(gate: Gate, error: str, *, now: float, rand: Callable[[], float]) -> Change:
    """A step that crashed on our side is retried like a transient failure, without a deadline cut."""
    retry = retry_later(gate, "internal error", None, now=now, rand=rand, until=None)
    return Change(gate.state, f"internal error {error}; will retry", retry.values)


def next_attempt_at(values: Mapping[str, Any], *, now: float, woken: bool) -> float:
    """When the gate is due after a step.

    A Stacksona callback that arrived while the step ran (`woken`) wins over the
    fallback poll schedule, never over a retry backoff (`Retry-After`): callbacks
    are unauthenticated.
    """
    planned = float(values.get("next_attempt_at", now))
    backing_off = bool(values.get("attempts"))
    return now if woken and not backing_off else planned
