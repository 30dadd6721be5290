"""The pure core, exhaustively: every status by token presence by requirement, every failure."""

import itertools

import pytest

from app.core.decision import (
    Approve,
    AwaitReview,
    Reject,
    Retry,
    StacksonaAnswer,
    StacksonaFailure,
    ValidateToken,
    classify_status,
    decide,
    decide_after_validation,
    decide_on_failure,
)
from app.core.secret import Secret

TOKEN = Secret("sat_one_time")
STATUSES = ["allow", "reject", "pending_review", "approved", "rejected", "ALLOW", " Approved ", "escalated", "", None]

# (status, token present, token required) -> expected outcome type
EXPECTED: dict[str, dict[tuple[bool, bool], type]] = {
    "allow": dict.fromkeys(itertools.product([False, True], repeat=2), Approve),
    "reject": dict.fromkeys(itertools.product([False, True], repeat=2), Reject),
    "pending_review": dict.fromkeys(itertools.product([False, True], repeat=2), AwaitReview),
    "rejected": dict.fromkeys(itertools.product([False, True], repeat=2), Reject),
    "approved": {
        (False, False): Approve,
        (False, True): Reject,
        (True, False): ValidateToken,
        (True, True): ValidateToken,
    },
    "unknown": dict.fromkeys(itertools.product([False, True], repeat=2), Reject),
}


@pytest.mark.parametrize(
    ("raw", "has_token", "required"), list(itertools.product(STATUSES, [False, True], [False, True]))
)
def test_every_status_and_token_combination(raw: str | None, has_token: bool, required: bool) -> None:
    answer = StacksonaAnswer(
        status=raw or "", thread_id="thr_1", message="m", approval_token=TOKEN if has_token else None
    )
    outcome = decide(answer, token_required=required)
    assert type(outcome) is EXPECTED[classify_status(raw).value][(has_token, required)]


@pytest.mark.parametrize("raw", ["escalated", "", "approve", "allowed", "pending", "APPROVED!"])
def test_unknown_status_never_approves_and_says_why(raw: str) -> None:
    outcome = decide(StacksonaAnswer(status=raw), token_required=False)
    assert isinstance(outcome, Reject)
    assert "unknown status" in outcome.reason


def test_reviewer_message_travels_with_the_verdict() -> None:
    outcome = decide(StacksonaAnswer(status="rejected", message="not today"), token_required=False)
    assert outcome == Reject("A Stacksona reviewer rejected the deployment", "not today")


def test_pending_keeps_thread_id() -> None:
    assert decide(StacksonaAnswer(status="pending_review", thread_id="thr_9"), token_required=False) == AwaitReview(
        "thr_9"
    )


def test_approved_with_token_asks_for_validation_of_that_token() -> None:
    outcome = decide(StacksonaAnswer(status="approved", approval_token=TOKEN, message="ok"), token_required=False)
    assert outcome == ValidateToken(TOKEN, "ok")


@pytest.mark.parametrize(
    ("valid", "tried_before", "expected", "words"),
    [
        (True, False, Approve, "token validated"),
        (True, True, Approve, "token validated"),
        (False, False, Reject, "not valid"),
        (False, True, Reject, "earlier validation's answer was lost"),
    ],
)
def test_after_validation(valid: bool, tried_before: bool, expected: type, words: str) -> None:
    outcome = decide_after_validation(valid, "msg", tried_before=tried_before)
    assert type(outcome) is expected
    assert words in outcome.reason and outcome.message == "msg"


FAILURES = [
    (StacksonaFailure("timeout"), Retry),
    (StacksonaFailure("network"), Retry),
    (StacksonaFailure("empty"), Retry),
    (StacksonaFailure("http", 500), Retry),
    (StacksonaFailure("http", 502), Retry),
    (StacksonaFailure("http", 503, retry_after=9.0), Retry),
    (StacksonaFailure("http", 429, retry_after=30.0), Retry),
    (StacksonaFailure("http", 408), Retry),
    (StacksonaFailure("http", 401), Reject),
    (StacksonaFailure("http", 403), Reject),
    (StacksonaFailure("http", 400), Reject),
    (StacksonaFailure("http", 404), Reject),
    (StacksonaFailure("http", 422), Reject),
    (StacksonaFailure("malformed", 200, detail="not JSON"), Reject),
]


@pytest.mark.parametrize(("failure", "expected"), FAILURES)
def test_failures_retry_only_when_transient(failure: StacksonaFailure, expected: type) -> None:
    outcome = decide_on_failure(failure)
    assert type(outcome) is expected
    if isinstance(outcome, Retry):
        assert outcome.retry_after == failure.retry_after
    else:
        assert outcome.reason


@pytest.mark.parametrize(("code", "words"), [(401, "STACKSONA_API_KEY"), (403, "paused")])
def test_auth_failures_say_why(code: int, words: str) -> None:
    outcome = decide_on_failure(StacksonaFailure("http", code))
    assert isinstance(outcome, Reject) and words in outcome.reason


def test_no_path_approves_without_allow_or_approved() -> None:
    """Brute force: only `allow` or `approved` can ever lead to Approve."""
    for raw, has_token, required in itertools.product(STATUSES, [False, True], [False, True]):
        answer = StacksonaAnswer(status=raw or "", approval_token=TOKEN if has_token else None)
        outcome = decide(answer, token_required=required)
        if isinstance(outcome, Approve | ValidateToken):
            assert classify_status(raw).value in ("allow", "approved")
