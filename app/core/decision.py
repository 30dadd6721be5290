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


class ReviewResult(StrEnum):
    DONE = "done"
    SUPERSEDED = "superseded"
    RETRY = "retry"
    FAILED = "failed"


# GitHub answers these when nothing is pending any more for the run and
# environment: the run was cancelled, an admin bypassed the rule, or it was
# already decided (possibly by our own earlier attempt that lost its answer).
_NOTHING_PENDING = frozenset({404, 409, 410, 422})


def classify_review_response(status_code: int | None) -> ReviewResult:
    """What a GitHub review/status call answer means; None is a transport failure."""
    if status_code is None or status_code >= 500 or status_code in (401, 403, 408, 429):
        # 401: a revoked token (a fresh one is minted); 403: secondary rate limit
        # or a permission an admin may still grant.
        return ReviewResult.RETRY
    if 200 <= status_code < 300:
        return ReviewResult.DONE
    if status_code in _NOTHING_PENDING:
        return ReviewResult.SUPERSEDED
    return ReviewResult.FAILED
