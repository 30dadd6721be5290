"""One worker step for one leased gate: call out, then describe the new state.

Each step does its network I/O first and returns a `Change`; the worker
writes it only if it still holds the lease. The meaning of every answer comes
from the pure core in `app.decision`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from app.clients.github import GitHubAnswer, GitHubClient, ReviewState, RunTarget
from app.clients.stacksona import StacksonaCallFailed, StacksonaClient
from app.core import comments
from app.core.backoff import poll_delay, retry_delay
from app.core.decision import (
    Approve,
    AwaitReview,
    Reject,
    Retry,
    ReviewResult,
    StacksonaAnswer,
    ValidateToken,
    Verdict,
    classify_review_response,
    decide,
    decide_after_validation,
    decide_on_failure,
)
from app.core.decision_request import build_decision_request
from app.core.gate import Change, Gate
from app.settings import Settings

# GitHub fails the job itself after 30 days; past that no answer matters.
GITHUB_WAIT_LIMIT_SECONDS = 30 * 86400.0
STATUS_REPORT_TRIES = 3

# Writes progress before a call that cannot be repeated blind; False when the
# worker no longer holds the gate's lease (see GateStore.mark).
Checkpoint = Callable[[Mapping[str, Any]], bool]


class LeaseLost(Exception):
    """The gate's lease is gone: another worker owns it, so this step must not call out."""


@dataclass(frozen=True)
class Services:
    settings: Settings
    stacksona: StacksonaClient
    github: GitHubClient
    clock: Callable[[], float]
    rand: Callable[[], float]


def run_step(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    if gate.state in ("new", "awaiting_review") and svc.clock() >= gate.deadline_at:
        deadline = comments.format_time(gate.deadline_at)
        return _to_reporting(gate, Reject(f"No Stacksona decision before the deadline ({deadline}): timed out"), svc)
    if gate.state == "new":
        return _ask(gate, svc, checkpoint)
    if gate.state == "awaiting_review":
        return _poll(gate, svc, checkpoint) if gate.status_reported else _post_status_report(gate, svc)
    if gate.state == "reporting":
        return _report(gate, svc, checkpoint)
    raise ValueError(f"gate {gate.id} is {gate.state!r}: nothing to do")


def _ask(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    request = build_decision_request(gate, svc.settings.environment_rules, svc.settings.github_web_url)
    try:
        answer = svc.stacksona.create_request(gate.task_id, request)
    except StacksonaCallFailed as exc:
        return _after_outcome(gate, decide_on_failure(exc.failure), gate.thread_id, svc)
    return _after_answer(gate, answer, svc, checkpoint)


def _poll(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    try:
        answer = svc.stacksona.get_decision(thread_id=gate.thread_id, task_id=gate.task_id)
    except StacksonaCallFailed as exc:
        return _after_outcome(gate, decide_on_failure(exc.failure), gate.thread_id, svc)
    return _after_answer(gate, answer, svc, checkpoint)


def _after_answer(gate: Gate, answer: StacksonaAnswer, svc: Services, checkpoint: Checkpoint) -> Change:
    token_required = svc.settings.stacksona_require_approval_token
    outcome = decide(answer, token_required=token_required)
    # The thread learnt when the request was created stays the gate's thread.
    thread_id = gate.thread_id or answer.thread_id
    if isinstance(outcome, ValidateToken):
        return _after_outcome(gate, _validate(gate, outcome, svc, checkpoint), thread_id, svc)
    return _after_outcome(gate, outcome, thread_id, svc)


def _validate(gate: Gate, check: ValidateToken, svc: Services, checkpoint: Checkpoint) -> Verdict | Retry:
    # Validated only here, immediately before approving: tokens are one-time.
    fingerprint = check.token.fingerprint()
    tried_before = gate.token_checked == fingerprint
    if not checkpoint({"token_checked": fingerprint}):
        raise LeaseLost(f"gate {gate.id}: lease lost before validating the approval token")
    try:
        valid = svc.stacksona.validate_approval(gate.task_id, check.token)
    except StacksonaCallFailed as exc:
        return decide_on_failure(exc.failure)
    return decide_after_validation(valid, check.message, tried_before=tried_before)


def _after_outcome(
    gate: Gate, outcome: Approve | Reject | AwaitReview | Retry, thread_id: str | None, svc: Services
) -> Change:
    if isinstance(outcome, Retry):
        return _retry(gate, outcome, svc, until=gate.deadline_at)
    if isinstance(outcome, AwaitReview):
        return _await(gate, thread_id or outcome.thread_id, svc)
    return _to_reporting(gate, outcome, svc, thread_id)


def _await(gate: Gate, thread_id: str | None, svc: Services) -> Change:
    values: dict[str, object]
    if gate.state == "new":
        values = {"thread_id": thread_id, "attempts": 0, "polls": 0, "last_error": None}
        return Change("awaiting_review", f"Stacksona asked a reviewer (thread {thread_id})", values)
    delay = poll_delay(gate.polls, svc.rand, cap=svc.settings.poll_max_interval_seconds)
    next_at = min(svc.clock() + delay, gate.deadline_at)
    values = {"polls": gate.polls + 1, "attempts": 0, "next_attempt_at": next_at, "last_error": None}
    return Change(gate.state, "still pending review", values, record=False)


def _to_reporting(gate: Gate, verdict: Verdict, svc: Services, thread_id: str | None = None) -> Change:
    state = "approved" if isinstance(verdict, Approve) else "rejected"
    values = {
        "verdict": state,
        "verdict_reason": verdict.reason,
        "reviewer_message": verdict.message,
        "thread_id": thread_id or gate.thread_id,
        "attempts": 0,
        "last_error": None,
    }
    return Change("reporting", f"verdict {state}: {verdict.reason}", values)


def _post_status_report(gate: Gate, svc: Services) -> Change:
    text = comments.status_report(_context(gate, svc), gate.deadline_at)
    answer = svc.github.status_report(_target(gate), text)
    result = _review_result(answer)
    # The status report is a courtesy: whatever GitHub answers, only the final
    # review may close the gate (a 4xx here may be a validation quirk).
    if result is ReviewResult.RETRY and gate.attempts + 1 < STATUS_REPORT_TRIES:
        return _retry(gate, Retry(answer.detail, answer.retry_after), svc, until=gate.deadline_at)
    done = result is ReviewResult.DONE
    reason = "status report posted on GitHub" if done else f"status report not posted ({answer.detail})"
    return Change(gate.state, reason, {"status_reported": True, "attempts": 0, "last_error": None})


def _report(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    state: ReviewState = "approved" if gate.verdict == "approved" else "rejected"
    text = comments.final_comment(
        state == "approved", gate.verdict_reason or "", gate.reviewer_message or "", _context(gate, svc)
    )
    if not checkpoint({"review_sent_at": svc.clock()}):
        raise LeaseLost(f"gate {gate.id}: lease lost before sending the review")
    answer = svc.github.review(_target(gate), state, text)
    result = _review_result(answer)
    if result is ReviewResult.DONE:
        return Change(state, f"GitHub deployment {state}", {"last_error": None})
    if result is ReviewResult.SUPERSEDED and gate.answered_at is not None:
        return Change(state, f"GitHub deployment {state}; the repeated answer found nothing more pending")
    if result is ReviewResult.SUPERSEDED and gate.review_sent_at is not None:
        # An earlier attempt's answer was lost (crash, timeout): GitHub most
        # likely took that review, which is why nothing is pending now.
        reason = f"GitHub has nothing pending after an earlier {state} review whose answer was lost ({answer.detail})"
        return Change(state, reason)
    if result is ReviewResult.SUPERSEDED:
        return Change("superseded", f"GitHub had nothing pending any more ({answer.detail}); {state} not needed")
    if result is ReviewResult.RETRY and svc.clock() < gate.created_at + GITHUB_WAIT_LIMIT_SECONDS:
        retry = _retry(gate, Retry(answer.detail, answer.retry_after), svc, until=None)
        # A refusal proves this attempt was not taken: only earlier attempts may have been.
        refused = answer.token_failure or (answer.status_code is not None and answer.status_code < 500)
        return replace(retry, values={**retry.values, "review_sent_at": gate.review_sent_at}) if refused else retry
    return Change("failed", f"GitHub did not take the {state} review ({answer.detail})")


def _review_result(answer: GitHubAnswer) -> ReviewResult:
    if answer.token_failure:
        # Minting the token failed (key rotated, clock skew, app suspended):
        # an admin can fix that, so keep trying rather than closing the gate.
        return ReviewResult.RETRY
    return classify_review_response(answer.status_code)


def _retry(gate: Gate, retry: Retry, svc: Services, *, until: float | None) -> Change:
    delay = retry_delay(gate.attempts, svc.rand, retry_after=retry.retry_after)
    next_at = svc.clock() + delay
    if until is not None:
        next_at = min(next_at, until)
    values = {"attempts": gate.attempts + 1, "next_attempt_at": next_at, "last_error": retry.reason}
    # Record the first retries and then every tenth, so a long outage stays readable.
    record = gate.attempts < 3 or gate.attempts % 10 == 0
    return Change(gate.state, f"{retry.reason}; retry {gate.attempts + 1} in {delay:.1f}s", values, record)


def _target(gate: Gate) -> RunTarget:
    return RunTarget(gate.owner, gate.repo, gate.run_id, gate.environment, gate.installation_id)


def _context(gate: Gate, svc: Services) -> comments.DecisionContext:
    template = svc.settings.stacksona_decision_url
    url = template.format(thread_id=gate.thread_id or "", task_id=gate.task_id) if template else None
    return comments.DecisionContext(gate.full_name, gate.environment, gate.thread_id, gate.task_id, url)
