"""The pure decision core: what Stacksona's answers and failures mean for a gate.

No I/O here. The vendor rule is ours too: missing approval, invalid token,
timeout, API failure or unknown status never approves a deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.core.secret import Secret


class Status(StrEnum):
    ALLOW = "allow"
    REJECT = "reject"
    PENDING_REVIEW = "pending_review"
    APPROVED = "approved"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StacksonaAnswer:
    """One parsed Stacksona response (create or poll)."""

    status: str
    thread_id: str | None = None
    task_id: str | None = None
    message: str = ""
    approval_token: Secret | None = None


@dataclass(frozen=True)
class StacksonaFailure:
    """A call that produced no usable answer."""

    kind: str  # "timeout", "network", "http", "malformed" or "empty"
    status_code: int | None = None
    retry_after: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Approve:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Reject:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class AwaitReview:
    thread_id: str | None


@dataclass(frozen=True)
class ValidateToken:
    token: Secret
    message: str = ""


@dataclass(frozen=True)
class Retry:
    reason: str
    retry_after: float | None = None


Verdict = Approve | Reject
AnswerOutcome = Approve | Reject | AwaitReview | ValidateToken
FailureOutcome = Retry | Reject

_TRANSIENT_HTTP = frozenset({408, 425, 429})


def classify_status(raw: str | None) -> Status:
    try:
        return Status((raw or "").strip().lower())
    except ValueError:
        return Status.UNKNOWN


def decide(answer: StacksonaAnswer, *, token_required: bool) -> AnswerOutcome:
    """Map one Stacksona answer to the next step of the gate."""
    status = classify_status(answer.status)
    if status is Status.ALLOW:
        return Approve("Stacksona allowed the deployment", answer.message)
    if status is Status.REJECT:
        return Reject("Stacksona rejected the deployment by policy", answer.message)
    if status is Status.REJECTED:
        return Reject("A Stacksona reviewer rejected the deployment", answer.message)
    if status is Status.PENDING_REVIEW:
        return AwaitReview(answer.thread_id)
    if status is Status.APPROVED:
        return _decide_approved(answer, token_required=token_required)
    shown = (answer.status or "<missing>")[:40]
    return Reject(f"Stacksona answered an unknown status {shown!r}", answer.message)


def _decide_approved(answer: StacksonaAnswer, *, token_required: bool) -> AnswerOutcome:
    if answer.approval_token:
        return ValidateToken(answer.approval_token, answer.message)
    if token_required:
        return Reject("Stacksona approved without the required approval token", answer.message)
    return Approve("A Stacksona reviewer approved the deployment", answer.message)


def decide_after_validation(valid: bool, message: str = "", *, tried_before: bool = False) -> Verdict:
    """Only an explicit valid answer from Stacksona's validate call approves.

    `tried_before`: this very token was sent for validation in an earlier
    attempt whose answer was lost, so "not valid" may only mean "already used".
    """
    if valid:
        return Approve("A Stacksona reviewer approved the deployment (approval token validated)", message)
    if tried_before:
        return Reject(
            "Stacksona said the one-time approval token is not valid; an earlier validation's answer was lost, "
            "so it may have been spent then. Rejected to be safe: re-run the deployment to ask again",
            message,
        )
    return Reject("Stacksona said the approval token is not valid", message)


def decide_on_failure(failure: StacksonaFailure) -> FailureOutcome:
    """Transient failures retry (until the deadline); everything else rejects."""
    if failure.kind in ("timeout", "network"):
        return Retry(f"Stacksona {failure.kind} error", failure.retry_after)
    if failure.kind == "empty":
        return Retry("Stacksona listed no decision yet")
    code = failure.status_code
    if failure.kind == "http" and code is not None and (code >= 500 or code in _TRANSIENT_HTTP):
        return Retry(f"Stacksona answered HTTP {code}", failure.retry_after)
    if code == 401:
        return Reject("Stacksona refused the API key (HTTP 401): check STACKSONA_API_KEY")
    if code == 403:
        return Reject("Stacksona agent is paused or its API is disabled (HTTP 403)")
    if failure.kind == "malformed":
        return Reject(f"Stacksona sent a response that could not be understood ({failure.detail})")
    return Reject(f"Stacksona refused the request (HTTP {code})")


# Creating a request: Stacksona does not document it as idempotent, so a create that may
# already have arrived is never sent again before the task is looked up.

# A create whose answer never came may still be running at Stacksona (our client waits 10 s
# for an answer; a proxy in between may hold a request for about a minute). The task is
# looked up only after this long, so a create still in flight is not mistaken for "not found".
CREATE_SETTLE_SECONDS = 60.0


@dataclass(frozen=True)
class SendCreate:
    """Send the create: no earlier one went out, or Stacksona clearly has no such task."""


@dataclass(frozen=True)
class LookUpTask:
    """An earlier create may have reached Stacksona: find the task before creating again."""


@dataclass(frozen=True)
class Adopt:
    """Stacksona has a decision for this task already: carry on with its thread and status."""

    answer: StacksonaAnswer


LookupOutcome = Adopt | SendCreate | Retry | Reject


def how_to_ask(request_sent_at: float | None) -> SendCreate | LookUpTask:
    """`request_sent_at` is the mark written before every create (crash, timeout or error after it)."""
    return SendCreate() if request_sent_at is None else LookUpTask()


def after_lookup(found: StacksonaAnswer | StacksonaFailure, *, sent_at: float, now: float) -> LookupOutcome:
    """What the task lookup means: only a clear "not found" (404, empty list) allows another create,
    and only once the create marked at `sent_at` has surely finished."""
    if isinstance(found, StacksonaAnswer):
        return Adopt(found)
    if found.kind == "empty" or (found.kind == "http" and found.status_code == 404):
        # A worker killed mid-create never saw it time out: Stacksona may still be running it.
        if now < sent_at + CREATE_SETTLE_SECONDS:
            wait = sent_at + CREATE_SETTLE_SECONDS - now
            return Retry(
                "Stacksona has no such task yet; an earlier create may still arrive, so it is looked up again", wait
            )
        return SendCreate()
    return decide_on_failure(found)


def decide_on_create_failure(failure: StacksonaFailure) -> FailureOutcome:
    """Like any failure; a create whose answer was lost is looked up once it has surely finished."""
    outcome = decide_on_failure(failure)
    if isinstance(outcome, Retry) and _may_still_run(failure):
        wait = max(outcome.retry_after or 0.0, CREATE_SETTLE_SECONDS)
        return Retry(f"{outcome.reason}; the request may have arrived, so the task is looked up first", wait)
    return outcome


def _may_still_run(failure: StacksonaFailure) -> bool:
    # A gateway answering 502 or 504 usually gave up waiting on a create Stacksona still runs
    # (a 503 is the service refusing work it has not started).
    return failure.kind in ("timeout", "network") or (failure.kind == "http" and failure.status_code in (502, 504))
