"""One worker step for one leased gate: call out, then describe the new state.

Each step does its network I/O and returns a `Change`; the worker writes it
only if it still holds the lease. What every answer means is decided in the
pure core: `app.core.decision` (Stacksona), `app.core.review` (GitHub) and
`app.core.transitions` (waiting, retrying, deadlines).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from app.clients.github import ReviewState, RunTarget
from app.clients.github_changes import ChangeReader
from app.clients.stacksona import StacksonaCallFailed
from app.core import comments, dry_run, review, transitions
from app.core.changes import ChangeContext, Unavailable
from app.core.decision import (
    Adopt,
    AwaitReview,
    LookupOutcome,
    LookUpTask,
    Reject,
    Retry,
    SendCreate,
    StacksonaAnswer,
    StacksonaFailure,
    ValidateToken,
    Verdict,
    after_lookup,
    classify_status,
    decide,
    decide_after_validation,
    decide_on_create_failure,
    decide_on_failure,
    how_to_ask,
)
from app.core.decision_request import build_decision_request
from app.core.gate import FINAL_STATES, Change, Gate, GateState
from app.core.policy import GatePolicy
from app.core.repo_policy import FileRetry, FileUnusable, with_repository_file
from app.core.timeline import timeline_event
from app.worker.services import Services

# Writes progress before a call that cannot be repeated blind; False when the
# worker no longer holds the gate's lease (see GateQueue.mark).
Checkpoint = Callable[[Mapping[str, Any]], bool]


class LeaseLost(Exception):
    """The gate's lease is gone: another worker owns it, so this step must not call out."""


def run_step(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    if transitions.is_past_deadline(gate, svc.clock()):
        return transitions.timed_out(gate)
    if gate.state is GateState.NEW:
        return _ask(gate, svc, checkpoint)
    if gate.state is GateState.AWAITING_REVIEW:
        return _poll(gate, svc, checkpoint) if gate.status_reported else _post_status_report(gate, svc)
    if gate.state is GateState.REPORTING:
        return _report(gate, svc, checkpoint)
    raise ValueError(f"gate {gate.id} is {gate.state!r}: nothing to do")


def _ask(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    if isinstance(how_to_ask(gate.request_sent_at), LookUpTask):
        found = _look_up(gate, svc)
        if isinstance(found, Adopt):
            change = _after_answer(gate, found.answer, svc, checkpoint)
            return replace(change, reason=f"found the request an earlier attempt created; {change.reason}")
        if not isinstance(found, SendCreate):
            return _after_outcome(gate, found, gate.thread_id, svc)
    return _create(gate, svc, checkpoint)


def _look_up(gate: Gate, svc: Services) -> LookupOutcome:
    sent_at = gate.request_sent_at or 0.0
    try:
        found: StacksonaAnswer | StacksonaFailure = svc.stacksona.find_task(gate.task_id)
    except StacksonaCallFailed as exc:
        found = exc.failure
    return after_lookup(found, sent_at=sent_at, now=svc.clock())


def _create(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    settled = _settle_policy(gate, svc)
    if isinstance(settled, Change):
        return settled
    gate, policy, fresh = settled
    request = build_decision_request(gate, policy, svc.settings.github_web_url, _what_would_ship(gate, policy, svc))
    # The policy is stored with the mark: a later attempt (even after a crash) asks and decides by it.
    if not checkpoint({"request_sent_at": svc.clock(), "policy": gate.policy, "deadline_at": gate.deadline_at}):
        raise LeaseLost(f"gate {gate.id}: lease lost before creating the Stacksona request")
    try:
        answer = svc.stacksona.create_request(gate.task_id, request)
    except StacksonaCallFailed as exc:
        change = _after_outcome(gate, decide_on_create_failure(exc.failure), gate.thread_id, svc)
    else:
        change = _after_answer(gate, answer, svc, checkpoint)
    return _with_story(change, policy) if fresh else change


def _what_would_ship(gate: Gate, policy: GatePolicy, svc: Services) -> ChangeContext:
    """Bounded and never raising: the request goes out with the change list or a line saying why not."""
    if not policy.change_summary:
        return Unavailable("turned off by the policy (change_summary: false)")
    return ChangeReader(svc.github, gate, states=svc.deployment_states).read()


def _settle_policy(gate: Gate, svc: Services) -> tuple[Gate, GatePolicy, bool] | Change:
    """The gate's policy: as stored, or (first ask: `True`) the central one tightened by the repository's file."""
    if (stored := GatePolicy.from_json(gate.policy)) is not None:
        return gate, stored, False
    central = svc.settings.gate_policy(gate.full_name, gate.environment)
    now, version = svc.clock(), svc.settings.github_api_version
    read = svc.policy_files.read(gate, svc.github, now=now, api_version=version)
    found = with_repository_file(central, read, gate.environment)
    if isinstance(found, FileRetry):
        retry = transitions.retry_later(
            gate, found.reason, found.retry_after, now=now, rand=svc.rand, until=gate.deadline_at
        )
        return replace(retry, alert=found.alert)
    policy = central if isinstance(found, FileUnusable) else found
    gate = replace(
        gate, policy=policy.to_json(), deadline_at=min(gate.deadline_at, gate.created_at + policy.deadline_seconds)
    )
    if isinstance(found, FileUnusable):
        closed = transitions.to_reporting(gate, Reject(f"Stacksona was not asked: {found.reason}"))
    elif transitions.is_past_deadline(gate, now):  # a shorter deadline from the repository's file ran out
        closed = transitions.timed_out(gate)
    else:
        return gate, policy, True
    values = {**closed.values, "policy": gate.policy, "deadline_at": gate.deadline_at}
    return _with_story(replace(closed, values=values), policy)


def _with_story(change: Change, policy: GatePolicy) -> Change:
    """The gate's history says which policy decided, and what the repository's file changed or could not."""
    story = f"policy: {policy.matched}, {policy.mode}"
    return replace(change, reason="; ".join([change.reason, story, *policy.notes]))


def _poll(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    # GitHub does not tell a protection rule that its run was cancelled: ask, so the
    # reviewer is not left deciding about a deployment that no longer waits.
    run = svc.github.get_run_status(_target(gate))
    if (finished := review.after_run_check(gate, run.status, run.conclusion)) is not None:
        return finished
    try:
        answer = svc.stacksona.get_decision(thread_id=gate.thread_id, task_id=gate.task_id)
    except StacksonaCallFailed as exc:
        return _after_outcome(gate, decide_on_failure(exc.failure), gate.thread_id, svc)
    return _after_answer(gate, answer, svc, checkpoint)


def _after_answer(gate: Gate, answer: StacksonaAnswer, svc: Services, checkpoint: Checkpoint) -> Change:
    svc.metrics.decision(classify_status(answer.status))  # a bounded label, whatever Stacksona sent
    outcome = decide(answer, token_required=_policy_of(gate, svc).require_approval_token)
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


def _after_outcome(gate: Gate, outcome: Verdict | AwaitReview | Retry, thread_id: str | None, svc: Services) -> Change:
    now = svc.clock()
    outcome = dry_run.outcome_in_mode(outcome, dry_run=_policy_of(gate, svc).dry_run)
    if isinstance(outcome, Retry):
        return transitions.retry_later(
            gate, outcome.reason, outcome.retry_after, now=now, rand=svc.rand, until=gate.deadline_at
        )
    if isinstance(outcome, AwaitReview):
        cap = svc.settings.poll_max_interval_seconds
        return transitions.await_review(gate, thread_id or outcome.thread_id, now=now, rand=svc.rand, poll_cap=cap)
    return transitions.to_reporting(gate, outcome, thread_id)


def _post_status_report(gate: Gate, svc: Services) -> Change:
    text = comments.status_report(_context(gate, svc), gate.deadline_at)
    answer = svc.github.status_report(_target(gate), text)
    version, cap = svc.settings.github_api_version, svc.settings.poll_max_interval_seconds
    return review.after_status_report(gate, answer, now=svc.clock(), rand=svc.rand, api_version=version, poll_cap=cap)


def _report(gate: Gate, svc: Services, checkpoint: Checkpoint) -> Change:
    dry = _policy_of(gate, svc).dry_run
    reason, message = gate.verdict_reason or "", gate.reviewer_message or ""
    text = dry_run.final_comment(review.verdict_of(gate), reason, message, _context(gate, svc), dry_run=dry)
    if not checkpoint({"review_sent_at": svc.clock()}):
        raise LeaseLost(f"gate {gate.id}: lease lost before sending the review")
    state: ReviewState = "approved" if review.review_state(gate, dry_run=dry) is GateState.APPROVED else "rejected"
    answer = svc.github.review(_target(gate), state, text)
    version = svc.settings.github_api_version
    return review.after_review(gate, answer, now=svc.clock(), rand=svc.rand, api_version=version, dry_run=dry)


def tell_stacksona(gate: Gate, change: Change, svc: Services) -> str | None:
    """Best effort, after a gate closed: the reviewer timeline shows what happened on GitHub.

    Returns why the event could not be added, or None.
    """
    if change.state not in FINAL_STATES or (gate.request_sent_at is None and gate.thread_id is None):
        return None  # Stacksona never heard of this task (e.g. an unusable repository file)
    event = timeline_event(gate, change)
    try:
        svc.stacksona.add_event(gate.task_id, event.event_type, event.summary, event.payload)
    except StacksonaCallFailed as exc:
        return str(exc)
    return None


def _policy_of(gate: Gate, svc: Services) -> GatePolicy:
    """The policy stored with the gate; before Stacksona was asked, the central policy as it is now."""
    if (stored := GatePolicy.from_json(gate.policy)) is not None:
        return stored
    central = svc.settings.gate_policy(gate.full_name, gate.environment)
    asked = gate.policy is not None or gate.request_sent_at is not None or gate.thread_id is not None
    return central.enforced(require_approval_token=svc.settings.stacksona_require_approval_token) if asked else central


def _target(gate: Gate) -> RunTarget:
    return RunTarget(gate.owner, gate.repo, gate.run_id, gate.environment, gate.installation_id)


def _context(gate: Gate, svc: Services) -> comments.DecisionContext:
    template = svc.settings.stacksona_decision_url
    url = template.format(thread_id=gate.thread_id or "", task_id=gate.task_id) if template else None
    return comments.DecisionContext(gate.full_name, gate.environment, gate.thread_id, gate.task_id, url)
